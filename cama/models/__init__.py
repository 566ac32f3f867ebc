from cama.models.cama import CAMA

__all__ = ["CAMA"]
from cama.models.fewshot import ProtoNet

__all__ += ["ProtoNet"]
from cama.models.retrieval import RetrievalModel

__all__ += ["RetrievalModel"]
from cama.models.classifier import ImageClassifier

__all__ += ["ImageClassifier"]
