#ifndef TINYREPO_VEC_H
#define TINYREPO_VEC_H

typedef struct {
    double x;
    double y;
} vec2;

double vec2_dot(vec2 a, vec2 b);

#endif
