"""Networks and heads. `build_backbone(name)` lists the valid names in its error."""
from .backbones import StagedBackbone
from .registry import BACKBONES, build_backbone
from .heads import ALL_VIEWS, IDENTITY_VIEW, HeadSpec, MultiHeadNetwork

__all__ = ["ALL_VIEWS", "BACKBONES", "HeadSpec", "IDENTITY_VIEW", "MultiHeadNetwork", "StagedBackbone",
           "build_backbone"]
