"""The paper's models that timm lacks, as plain ``nn.Module``s: CIFAR ResNets, WRN, DenseNet-BC, MNIST nets.

In: a factory name (``zoo:resnet32`` as a model spec, or ``build("resnet32", num_classes=100)``). Out: a
freshly initialised model (random weights) whose repeated same-resolution blocks ``condense.find_runs``
finds. Never: downloads anything.

What each model is (Kag & Saligrama, "Condensing CNNs with PDEs", CVPR 2022, and the papers it cites);
figures are the paper's, at batch 1, MACs as multiply-accumulates:

==========================  ===========================================================  ===============
name                        architecture                                                 paper figures
==========================  ===========================================================  ===============
``resnet20``/``resnet32``/  He et al. 2016 CIFAR ResNet, 3 stages x m basic blocks,      270K/41M,
``resnet56``                widths 16/32/64 (m = 3 / 5 / 9)                              460K/70M, 850K/127M
``wrn_40_4``                Wide-ResNet 40-4 (Zagoruyko & Komodakis): pre-activation     9.0M/1.30G
                            blocks, 6 per stage, widths 64/128/256, stem 16
``densenet_bc_100_12``      DenseNet-BC, k=12, L=100: 3 dense blocks of 16 bottleneck    0.8M/300M
                            layers, compression 0.5, stem 2k = 24 channels
``resnet_tiny``             Table 3 "<10M MACs" Resnet                                   13K/3.42M
``resnet_tiny_global``      the base whose default condense is Table 3's tiny            (14K/3.6M
                            Resnet-Global                                                after condense)
``wrn_tiny``                Table 3 "<10M MACs" Wide-Resnet                              22K/9.8M
``wrn_tiny_global``         the base whose condense (m=1, K=1) is Table 3's tiny         (23K/8.7M
                            Wide-Resnet-Global                                           after condense)
``resnet32_global_base``    ResNet-32 in the 4-stage layout of the authors' Global       (162K/15M
                            code (a 4th stage: 64 ch, stride 2, 1 block)                 after m=1)
``resnet56_global_base``    ResNet-56 likewise (4th stage of 2 blocks)                   (330K/30M
                                                                                         after m=2)
``resnet56_x2_global_base`` Table 7: the same at twice the width (32/64/128/128)         (1.32M/119M
                                                                                         after m=2)
``wrn_40_7``                Table 7: the base of Wide-Resnet-Global at WRN-40-4's        (9M/1.3G
                            budget (assumed width x7)                                    after condense)
``mnist_resnet``            Table 2 Resnet [3, 8] (Neural-ODE paper's): 2 downsamplings  600K/30M
                            to 64x6x6, 6 pre-activation GroupNorm residual blocks
``mnist_resnet_small``      Table 2 budget Resnet: 1 downsampling to 16x13x13, 6 blocks  33.3K/5.7M
``mnist_cnn_net``, ...      Fig. 2, as the authors' script builds them: a feature conv   524 params
``mnist_residual_net``,     f = conv3x3(BN-ReLU(x)), then a CNN, residual or PDE layer
``mnist_pde_net``           on the one map (``Fig2Feature``), ReLU, avg pool 4, linear
                            49 -> 10 (``mnist_pde_net_image``: condense's earlier
                            variant, a Global layer on the raw image, also 524)
==========================  ===========================================================  ===============

Shortcuts: the CIFAR ResNets use option B (a 1x1 conv + BN projection where the shape changes, identity
elsewhere), as the authors' code does; it also matches the paper's CIFAR-100 parameter counts (473K,
861K) better than option A (``shortcut="A"``: parameter-free zero-padding, He et al.'s CIFAR choice).

Assumptions for the models the paper does not fully specify are written next to each factory and in the
``notes`` of the recipes (``recipes/*.yaml``). The authors' public code (github.com/anilkagak2/PDE_GlobalLayer)
was read for configurations the paper leaves open; nothing of it is copied here.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._errors import CondenseError
from .pde import GlobalLayer, GlobalConfig
from .graph import register_leaf_module
from .pde._advection_diffusion import advection_diffusion, bounded_advection_diffusion

__all__ = [
    "BasicBlock",
    "PreActBlock",
    "CifarResNet",
    "WideResNet",
    "DenseLayer",
    "DenseBlock",
    "DenseNet",
    "MnistResBlock",
    "MnistResNet",
    "FeatureNet",
    "Fig2Feature",
    "resnet_cifar",
    "resnet20",
    "resnet32",
    "resnet56",
    "wide_resnet",
    "wrn_40_4",
    "wrn_40_7",
    "densenet_bc",
    "densenet_bc_100_12",
    "resnet_tiny",
    "resnet_tiny_global",
    "wrn_tiny",
    "wrn_tiny_global",
    "resnet32_global_base",
    "resnet56_global_base",
    "resnet56_x2_global_base",
    "mnist_resnet",
    "mnist_resnet_small",
    "mnist_cnn_net",
    "mnist_residual_net",
    "mnist_pde_net",
    "mnist_pde_net_image",
    "MODELS",
    "names",
    "build",
    "input_size",
]


# --- building blocks ---------------------------------------------------------------------------------


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class ShortcutA(nn.Module):
    """Option A: subsample by ``stride`` and zero-pad the channels (no parameters)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride, self.pad = stride, cout - cin

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))


class BasicBlock(nn.Module):
    """He et al.'s basic block: conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1, shortcut: str = "B"):
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            if shortcut == "B":
                self.downsample = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
                )
            else:
                self.downsample = ShortcutA(cin, cout, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    """Stem conv3x3-BN-ReLU, then ``len(widths)`` stages (``layer1`` ...) of basic blocks (stride 1, then 2
    at every further stage), global average pooling and a linear classifier."""

    def __init__(
        self,
        blocks: Sequence[int],
        widths: Sequence[int],
        num_classes: int = 10,
        in_chans: int = 3,
        stem_width: int | None = None,
        shortcut: str = "B",
    ):
        super().__init__()
        if len(blocks) != len(widths) or not blocks:
            raise CondenseError(f"blocks {tuple(blocks)} and widths {tuple(widths)} must have one entry per stage")
        if shortcut not in ("A", "B"):
            raise CondenseError(f"shortcut={shortcut!r} is not 'A' or 'B'")
        stem = stem_width or widths[0]
        self.conv1 = _conv3x3(in_chans, stem)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        cin = stem
        for i, (n, w) in enumerate(zip(blocks, widths)):
            layers = []
            for j in range(n):
                layers.append(BasicBlock(cin, w, stride=(2 if i > 0 and j == 0 else 1), shortcut=shortcut))
                cin = w
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
        self.num_stages = len(blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


class PreActBlock(nn.Module):
    """Zagoruyko & Komodakis' wide basic block: BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 + shortcut (a 1x1
    conv of the pre-activated input where the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.conv2 = _conv3x3(cout, cout)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        o = self.relu1(self.bn1(x))
        identity = x if self.shortcut is None else self.shortcut(o)
        out = self.conv2(self.dropout(self.relu2(self.bn2(self.conv1(o)))))
        return out + identity


class WideResNet(nn.Module):
    """WRN-d-k for CIFAR: stem conv3x3 (16 channels), 3 stages of (d - 4) / 6 pre-activation blocks of widths
    16k/32k/64k (strides 1, 2, 2), final BN-ReLU, global average pooling, linear classifier."""

    def __init__(
        self,
        blocks: Sequence[int],
        widths: Sequence[int],
        num_classes: int = 10,
        in_chans: int = 3,
        stem_width: int = 16,
        drop_rate: float = 0.0,
    ):
        super().__init__()
        self.conv1 = _conv3x3(in_chans, stem_width)
        cin = stem_width
        for i, (n, w) in enumerate(zip(blocks, widths)):
            layers = []
            for j in range(n):
                layers.append(PreActBlock(cin, w, stride=(2 if i > 0 and j == 0 else 1), drop_rate=drop_rate))
                cin = w
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
        self.num_stages = len(blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        x = self.relu(self.bn(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class DenseLayer(nn.Module):
    """DenseNet-BC bottleneck layer: BN-ReLU-conv1x1 (4k) - BN-ReLU-conv3x3 (k) on the concatenation of all
    earlier features (the concatenation happens inside the layer, as in torchvision and timm)."""

    def __init__(self, cin: int, growth_rate: int, bn_size: int = 4):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, bn_size * growth_rate, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(bn_size * growth_rate, growth_rate)

    def forward(self, features: list[Tensor]) -> Tensor:
        x = torch.cat(features, 1)
        return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))


class DenseBlock(nn.Module):
    def __init__(self, num_layers: int, cin: int, growth_rate: int, bn_size: int = 4):
        super().__init__()
        self.layers = nn.ModuleList(
            [DenseLayer(cin + i * growth_rate, growth_rate, bn_size) for i in range(num_layers)]
        )

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, cout, 1, bias=False), nn.AvgPool2d(2, 2)
        )


class DenseNet(nn.Module):
    """DenseNet-BC for 32x32 inputs (Huang et al.): stem conv3x3 (2k channels), dense blocks joined by
    transitions (BN-ReLU-conv1x1 with compression, avg pool 2), final BN-ReLU, pooling, classifier."""

    def __init__(
        self,
        block_config: Sequence[int] = (16, 16, 16),
        growth_rate: int = 12,
        compression: float = 0.5,
        bn_size: int = 4,
        num_classes: int = 10,
        in_chans: int = 3,
    ):
        super().__init__()
        c = 2 * growth_rate
        self.conv0 = _conv3x3(in_chans, c)
        for i, n in enumerate(block_config):
            self.add_module(f"denseblock{i + 1}", DenseBlock(n, c, growth_rate, bn_size))
            c += n * growth_rate
            if i != len(block_config) - 1:
                cout = int(c * compression)
                self.add_module(f"transition{i + 1}", Transition(c, cout))
                c = cout
        self.num_blocks = len(block_config)
        self.norm = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv0(x)
        for i in range(self.num_blocks):
            x = getattr(self, f"denseblock{i + 1}")(x)
            if i != self.num_blocks - 1:
                x = getattr(self, f"transition{i + 1}")(x)
        x = self.relu(self.norm(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _gn(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels), channels)


class MnistResBlock(nn.Module):
    """The Neural-ODE paper's residual block: GN-ReLU-conv3x3-GN-ReLU-conv3x3 + identity."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm1 = _gn(channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = _conv3x3(channels, channels)
        self.norm2 = _gn(channels)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))


class MnistResNet(nn.Module):
    """Chen et al.'s MNIST ResNet: conv3x3 (valid, 28 -> 26), then ``downsample`` times GN-ReLU-conv4x4 stride 2
    (26 -> 13 -> 6), ``blocks`` residual blocks at that resolution, GN-ReLU, pooling, linear classifier."""

    def __init__(self, width: int = 64, downsample: int = 2, blocks: int = 6, num_classes: int = 10, in_chans: int = 1):
        super().__init__()
        stem: list[nn.Module] = [nn.Conv2d(in_chans, width, 3, 1)]
        for _ in range(downsample):
            stem += [_gn(width), nn.ReLU(inplace=True), nn.Conv2d(width, width, 4, 2, 1)]
        self.stem = nn.Sequential(*stem)
        self.blocks = nn.Sequential(*[MnistResBlock(width) for _ in range(blocks)])
        self.norm = _gn(width)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(self.stem(x))
        x = self.relu(self.norm(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


FIG2_KINDS = ("cnn", "residual", "pde")


@register_leaf_module  # the solver's argument checks are control flow fx cannot trace; a PDE layer is a leaf too
class Fig2Feature(nn.Module):
    """The feature layer of the authors' Fig. 2 illustration (``train_mnist_illustrative_example.py``): one
    feature map, 24 parameters, the same five modules for the three nets::

        f = conv_f(relu(bn_f(x)))                                   # the feature conv, 1 -> 1 channel
        cnn:      conv_g(relu(bn_g(f)))                             # no BN-ReLU after it
        residual: relu(bn_out(f + conv_g(relu(bn_g(f)))))           # K = 1
        pde:      relu(bn_out(H^K)), H^-1 = H^0 = f, source f, u = v = -conv_g(relu(bn_g(f)))

    The PDE is Eq. 4 (``advection_diffusion``) with constant diffusion 1, dt = 0.2, dx = dy = 1, periodic
    boundary and K = 5, with ONE velocity field for both directions and no bound on it - the authors' loop
    exactly (their u acts along H and v along W with the opposite sign of ours; with u = v that is ours
    at velocity -g, see ``test_zoo``). ``max_courant`` (e.g. 0.5, the Global layer's default) bounds the
    velocity as ``GlobalLayer`` does, to measure what the bound changes. In the CNN ``bn_out`` is
    registered but unused, as in the authors' code (it counts in their 524 parameters; 522 are used)."""

    def __init__(self, kind: str = "pde", K: int = 5, max_courant: float | None = None):
        super().__init__()
        if kind not in FIG2_KINDS:
            raise CondenseError(f"Fig. 2 feature kind={kind!r} is not one of {', '.join(FIG2_KINDS)}")
        if not isinstance(K, int) or isinstance(K, bool) or not 1 <= K <= 100:
            raise CondenseError(f"K={K!r} must be an integer in [1, 100]")
        if max_courant is not None and not 0 < max_courant <= 1:
            raise CondenseError(f"max_courant={max_courant!r} must be in (0, 1] or None (unbounded)")
        self.kind, self.K, self.max_courant = kind, K, max_courant
        self.bn_f = nn.BatchNorm2d(1)
        self.conv_f = _conv3x3(1, 1)
        self.bn_g = nn.BatchNorm2d(1)
        self.conv_g = _conv3x3(1, 1)
        self.bn_out = nn.BatchNorm2d(1)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}" + (f", K={self.K}, max_courant={self.max_courant}" if self.kind == "pde" else "")

    def forward(self, x: Tensor) -> Tensor:
        f = self.conv_f(F.relu(self.bn_f(x)))
        g = self.conv_g(F.relu(self.bn_g(f)))
        if self.kind == "cnn":
            return g
        if self.kind == "residual":
            h = f + g
        elif self.max_courant is None:
            h = advection_diffusion(f, f, -g, -g, 1.0, 1.0, K=self.K, dt=0.2, dx=1.0, dy=1.0, boundary="periodic")
        else:
            h = bounded_advection_diffusion(
                f,
                f,
                -g,
                -g,
                1.0,
                1.0,
                K=self.K,
                dt=0.2,
                dx=1.0,
                dy=1.0,
                boundary="periodic",
                courant=self.max_courant,
                dmax=10.0,
            )
        return F.relu(self.bn_out(h))


class FeatureNet(nn.Module):
    """Fig. 2: one feature layer producing one feature map, ReLU, avg pool 4 (28 -> 7), linear 49 -> 10."""

    def __init__(self, feature: nn.Module, num_classes: int = 10, image_size: int = 28):
        super().__init__()
        self.feature = feature
        self.pool = nn.AvgPool2d(4)
        self.fc = nn.Linear((image_size // 4) ** 2, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(F.relu(self.feature(x)))
        return self.fc(torch.flatten(x, 1))


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


# --- factories -----------------------------------------------------------------------------------------


def resnet_cifar(
    depth: int | None = 32,
    num_classes: int = 10,
    width: int = 16,
    *,
    blocks: Sequence[int] | None = None,
    widths: Sequence[int] | None = None,
    stem_width: int | None = None,
    shortcut: str = "B",
    in_chans: int = 3,
) -> CifarResNet:
    """He et al.'s CIFAR ResNet of ``depth`` = 6m + 2 (m basic blocks per stage; widths ``width`` x 1/2/4).

    ``blocks``/``widths`` override the stages (e.g. 4 stages, as the authors' Global models use);
    ``shortcut`` is ``"B"`` (1x1 conv + BN projection, the default) or ``"A"`` (zero-padding)."""
    if blocks is None:
        if depth is None or (depth - 2) % 6 or depth < 8:
            raise CondenseError(f"CIFAR ResNet depth {depth!r} is not 6m + 2", "use 20, 32, 44, 56, 110, ...")
        blocks = [(depth - 2) // 6] * 3
    if widths is None:
        widths = [width * 2**i for i in range(len(blocks))]
    return CifarResNet(
        blocks, widths, num_classes=num_classes, in_chans=in_chans, stem_width=stem_width, shortcut=shortcut
    )


def resnet20(num_classes: int = 10, **kw: Any) -> CifarResNet:
    """ResNet-20 (m = 3). Paper: 270K params, 41M MACs."""
    return resnet_cifar(20, num_classes, **kw)


def resnet32(num_classes: int = 10, **kw: Any) -> CifarResNet:
    """ResNet-32 (m = 5). Paper: 460K params (473K with 100 classes), 70M MACs."""
    return resnet_cifar(32, num_classes, **kw)


def resnet56(num_classes: int = 10, **kw: Any) -> CifarResNet:
    """ResNet-56 (m = 9). Paper: 850K params (861K with 100 classes), 127M MACs."""
    return resnet_cifar(56, num_classes, **kw)


def wide_resnet(
    depth: int = 40,
    widen: int = 4,
    num_classes: int = 10,
    *,
    drop_rate: float = 0.0,
    widths: Sequence[int] | None = None,
    stem_width: int = 16,
    in_chans: int = 3,
) -> WideResNet:
    """WRN-``depth``-``widen`` (depth = 6n + 4: n pre-activation blocks per stage)."""
    if (depth - 4) % 6 or depth < 10:
        raise CondenseError(f"WRN depth {depth!r} is not 6n + 4", "use 16, 22, 28, 40, ...")
    n = (depth - 4) // 6
    widths = widths or [16 * widen, 32 * widen, 64 * widen]
    return WideResNet(
        [n] * len(widths),
        widths,
        num_classes=num_classes,
        in_chans=in_chans,
        stem_width=stem_width,
        drop_rate=drop_rate,
    )


def wrn_40_4(num_classes: int = 10, **kw: Any) -> WideResNet:
    """WRN-40-4 (6 blocks per stage, widths 64/128/256). Paper: 9.0M params, 1.3G MACs."""
    return wide_resnet(40, 4, num_classes, **kw)


def wrn_40_7(num_classes: int = 10, **kw: Any) -> WideResNet:
    """WRN-40-7: assumed base of Table 7's Wide-Resnet-Global (9M / 1.3G after condensing with init=block;
    the paper does not say how it was widened - x7 is what lands at the budget of WRN-40-4)."""
    return wide_resnet(40, 7, num_classes, **kw)


def densenet_bc(depth: int = 100, growth_rate: int = 12, num_classes: int = 10, **kw: Any) -> DenseNet:
    """DenseNet-BC-``depth`` (3 dense blocks of (depth - 4) / 6 bottleneck layers)."""
    if (depth - 4) % 6:
        raise CondenseError(f"DenseNet-BC depth {depth!r} is not 6n + 4", "use 40, 100, 190, ...")
    n = (depth - 4) // 6
    return DenseNet((n, n, n), growth_rate, num_classes=num_classes, **kw)


def densenet_bc_100_12(num_classes: int = 10, **kw: Any) -> DenseNet:
    """DenseNet-BC (k=12, L=100): 3 dense blocks of 16 layers. Paper: 0.8M params, 300M MACs."""
    return densenet_bc(100, 12, num_classes, **kw)


def resnet_tiny(num_classes: int = 10, **kw: Any) -> CifarResNet:
    """Table 3's tiny Resnet (13K / 3.42M). Assumed, after the authors' code: 4 stages (strides 1, 2, 2, 2) of
    3 basic blocks, widths 6/8/8/8 (their script labels the CIFAR-10 run m=5, but only m=3 gives 13K/3.4M)."""
    return resnet_cifar(None, num_classes, blocks=(3, 3, 3, 3), widths=(6, 8, 8, 8), **kw)


def resnet_tiny_global(num_classes: int = 10, widths: Sequence[int] = (9, 9, 16, 16), **kw: Any) -> CifarResNet:
    """The base of Table 3's tiny Resnet-Global (14K / 3.6M). Assumed, after the authors' code: 4 stages of
    widths 9/9/16/16 (their CIFAR-100 run: 10/9/16/16); stages 1-3 have 3 blocks (condensed to m=1 + a
    Global layer), stage 4 one block (no run, kept as is). The uncondensed model is not in the paper."""
    return resnet_cifar(None, num_classes, blocks=(3, 3, 3, 1), widths=widths, **kw)


def wrn_tiny(num_classes: int = 10, **kw: Any) -> CifarResNet:
    """Table 3's tiny Wide-Resnet (22K / 9.8M). Assumed, after the authors' code (WRN-40 layout with base
    width 2 x 4): 3 stages of 6 post-activation basic blocks, all 8 channels wide, stem 8."""
    return resnet_cifar(None, num_classes, blocks=(6, 6, 6), widths=(8, 8, 8), **kw)


def wrn_tiny_global(num_classes: int = 10, **kw: Any) -> CifarResNet:
    """The base of Table 3's tiny Wide-Resnet-Global (23K / 8.7M). Assumed, after the authors' code: widths
    16/20/20 (base 4/5/5 x 4), 6 blocks per stage, condensed to m=1 with K=1. (Their WRN Global layer
    starts from a basic block, i.e. ``init=block``, but at this size only ``init=input`` lands near the
    paper's figures; with a block the model has ~40K params.)"""
    return resnet_cifar(None, num_classes, blocks=(6, 6, 6), widths=(16, 20, 20), **kw)


def resnet32_global_base(num_classes: int = 10, **kw: Any) -> CifarResNet:
    """ResNet-32 in the layout of the authors' Resnet-Global code: the 3 stages of ResNet-32 (5 blocks, widths
    16/32/64) plus a fourth stage (64 channels, stride 2, one block). Condensed to m=1 it is the paper's
    Resnet-Global of Tables 1/3 (162K / 15M); the fourth stage is absent from the ResNet-32 baseline."""
    return resnet_cifar(None, num_classes, blocks=(5, 5, 5, 1), widths=(16, 32, 64, 64), **kw)


def resnet56_global_base(num_classes: int = 10, **kw: Any) -> CifarResNet:
    """ResNet-56 in the layout of the authors' Resnet-Global code: 3 stages of 9 blocks (16/32/64) plus a
    fourth stage (64 channels, stride 2, 2 blocks). Condensed to m=2 it is Table 3's m=2 Resnet-Global
    (330K / 30M)."""
    return resnet_cifar(None, num_classes, blocks=(9, 9, 9, 2), widths=(16, 32, 64, 64), **kw)


def resnet56_x2_global_base(num_classes: int = 10, **kw: Any) -> CifarResNet:
    """The base of Table 7's Resnet-Global (1.32M / 119M on CIFAR-100, m=2). Assumed: ``resnet56_global_base``
    at twice the width (32/64/128/128): x2 width gives x4 the params and MACs of the 330K / 30M model."""
    return resnet_cifar(None, num_classes, blocks=(9, 9, 9, 2), widths=(32, 64, 128, 128), **kw)


def mnist_resnet(num_classes: int = 10, **kw: Any) -> MnistResNet:
    """Table 2's Resnet [3, 8] (600K / 30M): Chen et al.'s MNIST ResNet - conv3x3 then two GN-ReLU-conv4x4/2
    downsamplings to 64 x 6 x 6, 6 residual blocks there, GN-ReLU, pooling, linear."""
    return MnistResNet(width=64, downsample=2, blocks=6, num_classes=num_classes, **kw)


def mnist_resnet_small(num_classes: int = 10, **kw: Any) -> MnistResNet:
    """Table 2's budget Resnet (33.3K / 5.7M; its Global version 9.94K / 1.7M). The supplementary (A.3) is not
    available; assumed: the same net at width 16 with one downsampling (26 -> 13) instead of two. The
    paper's figures pin the resolution: the 5 blocks the Global layer removes cost 23.4K params and 4.0M
    MACs, about 170 MACs per parameter, i.e. 3x3 convs on a 13 x 13 map; at width 16 that is 4.6K
    params per block, so 6 blocks, as in the large net."""
    return MnistResNet(width=16, downsample=1, blocks=6, num_classes=num_classes, **kw)


def mnist_cnn_net(num_classes: int = 10) -> FeatureNet:
    """Fig. 2 CNN-Net (524 params, as the authors count): f = conv(BN-ReLU(x)), then conv(BN-ReLU(f)) with no
    BN-ReLU after it (``Fig2Feature``); ReLU, avg pool 4, linear 49 -> 10."""
    return FeatureNet(Fig2Feature("cnn"), num_classes)


def mnist_residual_net(num_classes: int = 10) -> FeatureNet:
    """Fig. 2 Residual-Net (524 params): f = conv(BN-ReLU(x)), then BN-ReLU(f + conv(BN-ReLU(f))) (K=1)."""
    return FeatureNet(Fig2Feature("residual"), num_classes)


def mnist_pde_net(num_classes: int = 10, K: int = 5, max_courant: float | None = None) -> FeatureNet:
    """Fig. 2 PDE-Net (524 params), the authors' net: f = conv(BN-ReLU(x)) is the initial state and the
    source; one velocity field conv(BN-ReLU(f)) for u and v, unbounded; diffusion 1, K=5, dt=0.2, periodic;
    BN-ReLU out. ``max_courant`` bounds the velocity as the Global layer does (not the authors')."""
    return FeatureNet(Fig2Feature("pde", K=K, max_courant=max_courant), num_classes)


def mnist_pde_net_image(num_classes: int = 10, K: int = 5) -> FeatureNet:
    """A 524-param variant (condense's earlier Fig. 2 PDE-Net, not the authors'): one ``GlobalLayer`` on the
    raw image (H^0 and source = the image; u, v from two depthwise 3x3 convs + BN = 22 params, bounded;
    constant diffusion 1, K=5, dt=0.2; BN-ReLU out = 2)."""
    layer = GlobalLayer(1, GlobalConfig(K=K, velocity="dwconv", diffusion="constant", out_norm="batch", out_act="relu"))
    return FeatureNet(layer, num_classes)


# --- the name table --------------------------------------------------------------------------------------

MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "resnet_cifar": resnet_cifar,
    "wrn_40_4": wrn_40_4,
    "wrn_40_7": wrn_40_7,
    "wide_resnet": wide_resnet,
    "densenet_bc_100_12": densenet_bc_100_12,
    "densenet_bc": densenet_bc,
    "resnet_tiny": resnet_tiny,
    "resnet_tiny_global": resnet_tiny_global,
    "wrn_tiny": wrn_tiny,
    "wrn_tiny_global": wrn_tiny_global,
    "resnet32_global_base": resnet32_global_base,
    "resnet56_global_base": resnet56_global_base,
    "resnet56_x2_global_base": resnet56_x2_global_base,
    "mnist_resnet": mnist_resnet,
    "mnist_resnet_small": mnist_resnet_small,
    "mnist_cnn_net": mnist_cnn_net,
    "mnist_residual_net": mnist_residual_net,
    "mnist_pde_net": mnist_pde_net,
    "mnist_pde_net_image": mnist_pde_net_image,
}

_MNIST = {
    "mnist_resnet",
    "mnist_resnet_small",
    "mnist_cnn_net",
    "mnist_residual_net",
    "mnist_pde_net",
    "mnist_pde_net_image",
}


def names() -> list[str]:
    """The zoo's model names (``zoo:NAME``)."""
    return sorted(MODELS)


def input_size(name: str) -> tuple[int, int, int]:
    """The input size a zoo model is made for: (1, 28, 28) for the MNIST nets, else (3, 32, 32)."""
    _factory(name)
    return (1, 28, 28) if name in _MNIST else (3, 32, 32)


def _factory(name: str) -> Callable[..., nn.Module]:
    if name not in MODELS:
        close = difflib.get_close_matches(name, list(MODELS), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"zoo models: {', '.join(names())}"
        raise CondenseError(f"unknown zoo model {name!r}", hint)
    return MODELS[name]


def build(name: str, **kwargs: Any) -> nn.Module:
    """A fresh zoo model by name; keyword arguments (``num_classes``, ...) go to its factory. The model's
    ``pretrained_cfg["input_size"]`` says what it is made for (as timm models do), so the command line
    needs no ``--input-size``."""
    fn = _factory(name)
    try:
        model = fn(**kwargs)
    except TypeError as err:  # a wrong keyword (factories pass **kw on to the general builders)
        text = str(err)
        if not any(s in text for s in ("unexpected keyword", "multiple values", "required positional")):
            raise
        raise CondenseError(
            f"zoo:{name}: {text.split('() ', 1)[-1]}", f"see condense.zoo.{fn.__name__} for its arguments"
        ) from err
    model.pretrained_cfg = {"input_size": input_size(name)}  # read by condense's default input size
    return model
