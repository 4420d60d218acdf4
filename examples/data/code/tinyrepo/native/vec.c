#include <math.h>

#include "vec.h"

double vec2_dot(vec2 a, vec2 b) {
    return a.x * b.x + a.y * b.y;
}

double vec2_norm(vec2 a) {
    return sqrt(vec2_dot(a, a));
}
