from cama.models.cama import CAMA

__all__ = ["CAMA"]
