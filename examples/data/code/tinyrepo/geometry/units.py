from .shapes import Shape


class Unit:
    def __init__(self, name):
        self.name = name

    def describe(self, shape):
        assert isinstance(shape, Shape)
        return f"{shape.area():.2f} {self.name}^2"
