"""Encoders (torchvision ResNet-18/50 without the classifier) and the BYOL MLP heads."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

_ARCHS = {"resnet18": (BasicBlock, (2, 2, 2, 2)), "resnet50": (Bottleneck, (3, 4, 6, 3))}


@dataclass(frozen=True)
class EncoderSpec:
    """Everything needed to rebuild an encoder; saved beside its weights."""

    arch: str  # resnet18 | resnet50
    width: float  # multiplier on the 64 base channels (1.0 is torchvision's ResNet)
    in_channels: int  # 1 or 3
    small_stem: bool  # 3x3 stride-1 conv and no max-pool (CIFAR-style), for images of ~32 px
    pool: int = 1  # the last feature map is averaged over pool x pool cells (1: global average pooling)

    @property
    def base_channels(self) -> int:
        return max(1, round(64 * self.width))

    @property
    def feature_dim(self) -> int:
        block, _ = _ARCHS[self.arch]
        return self.base_channels * 8 * block.expansion * self.pool**2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> EncoderSpec:
        """The spec saved by :meth:`to_dict`, checked: ValueError says what is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"the spec is a {type(data).__name__}, not a dict")
        missing = [key for key in ("arch", "width", "in_channels", "small_stem") if key not in data]
        if missing:
            raise ValueError(f"the spec lacks {', '.join(missing)}")
        arch, width, channels, stem = data["arch"], data["width"], data["in_channels"], data["small_stem"]
        pool = data.get("pool", 1)  # encoders saved before the grid existed pool globally
        if arch not in _ARCHS:
            raise ValueError(f"unknown arch {str(arch)[:40]!r} (expected one of {sorted(_ARCHS)})")
        if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 4 \
                or width != width:
            raise ValueError(f"width {str(width)[:40]} is not a number in (0, 4]")
        if isinstance(channels, bool) or channels not in (1, 3):
            raise ValueError(f"in_channels {str(channels)[:40]} is not 1 or 3")
        if not isinstance(stem, bool):
            raise ValueError(f"small_stem {str(stem)[:40]} is not true or false")
        if isinstance(pool, bool) or not isinstance(pool, int) or not 1 <= pool <= 8:
            raise ValueError(f"pool {str(pool)[:40]} is not a whole number from 1 to 8")
        return cls(arch=arch, width=float(width), in_channels=int(channels), small_stem=stem, pool=pool)


class ResNetEncoder(ResNet):
    """torchvision's ResNet with a width multiplier, 1 or 3 input channels, an optional
    small-image stem, and no classifier: ``forward`` maps (B, C, H, W) to (B, feature_dim).

    With ``pool`` > 1 the last feature map is averaged over a pool x pool grid of cells instead
    of globally, and the cells are concatenated: the feature keeps where in the image a part is.
    On small, centred images (Fashion-MNIST) that is worth more than any training length within
    a CPU budget (benchmarks/RESULTS.md, the pooling sweep)."""

    def __init__(self, spec: EncoderSpec) -> None:
        if spec.arch not in _ARCHS:
            raise ValueError(f"unknown arch {spec.arch!r}; expected one of {sorted(_ARCHS)}")
        block, layers = _ARCHS[spec.arch]
        nn.Module.__init__(self)  # ResNet.__init__ hard-codes 64 base channels; set up its fields here
        base = spec.base_channels
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = base, 1, 1, 64
        if spec.small_stem:
            self.conv1 = nn.Conv2d(spec.in_channels, base, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(spec.in_channels, base, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(base)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, base, layers[0])
        self.layer2 = self._make_layer(block, base * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, base * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, base * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(spec.pool)  # ResNet's forward flattens what it gives
        self.fc = nn.Identity()
        # torchvision's initialisation.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)


def build_encoder(spec: EncoderSpec) -> ResNetEncoder:
    return ResNetEncoder(spec)


class MLPHead(nn.Sequential):
    """Linear -> BatchNorm -> ReLU -> Linear: BYOL's projector and predictor.

    "a linear layer with output size 4096 followed by batch normalization, rectified linear
    units (ReLU), and a final linear layer with output dimension 256" (BYOL, section 3.3).
    Maps (B, in_dim) to (B, out_dim).
    """

    def __init__(self, in_dim: int, hidden_dim: int = 4096, out_dim: int = 256) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

