from geometry import Circle, area


def main():
    shapes = [Circle(2.0)] + area.unit_shapes()
    print(f"total area: {area.total_area(shapes):.2f}")


if __name__ == "__main__":
    main()
