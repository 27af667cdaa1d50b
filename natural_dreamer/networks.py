"""Building blocks: model-size presets, MLPs, image and vector encoders and decoders, heads.

Every hidden layer is Linear -> RMSNorm -> SiLU (the paper's choice for stable training at any
scale). Images enter as x / 255 - 0.5; vectors enter symlogged (paper section "Robust
predictions"), so a single set of hyperparameters handles any observation scale.
"""

from contextlib import contextmanager

import torch
from torch import nn

from natural_dreamer.distributions import TwoHotDist
from natural_dreamer.utils import symlog

V1_PRESETS = {  # deter, CNN depth, dense units, MLP layers (DreamerV3 v1, Table of sizes)
    "v1_xs": (256, 24, 256, 1),
    "v1_s": (512, 32, 512, 2),
    "v1_m": (1024, 48, 640, 3),
    "v1_l": (2048, 64, 768, 4),
    "v1_xl": (4096, 96, 1024, 5),
}
V2_PRESETS = {"1m": 64, "12m": 256, "25m": 384, "50m": 512, "100m": 768, "200m": 1024}


def model_sizes(preset: str) -> dict:
    """Layer sizes of a named preset.

    v2 (Nature) presets scale with one width d: deter 8d, hidden d, classes d/16, CNN depth
    d/16, a block-diagonal GRU of 8 blocks. v1 presets come from the first paper's table.
    """
    if preset in V2_PRESETS:
        d = V2_PRESETS[preset]
        return dict(
            deter=8 * d,
            hidden=d,
            classes=d // 16,
            units=d,
            cnn_depth=d // 16,
            cnn_mults=(2, 3, 4, 4),
            mlp_layers=3,
            head_layers=1,
            blocks=8,
        )
    if preset in V1_PRESETS:
        deter, depth, units, layers = V1_PRESETS[preset]
        return dict(
            deter=deter,
            hidden=units,
            classes=32,
            units=units,
            cnn_depth=depth,
            cnn_mults=(1, 2, 4, 8),
            mlp_layers=layers,
            head_layers=layers,
            blocks=1,
        )
    names = ", ".join([*V2_PRESETS, *V1_PRESETS])
    raise ValueError(f"unknown model preset '{preset}'; choose one of: {names}")


def fan_in(module: nn.Module) -> int:
    """How many inputs each output of a layer sums, as the official initialiser counts them:
    in_features for Linear, in_channels * kernel area for convolutions (transposed ones
    included), and blocks * inputs per block for a BlockLinear."""
    weight = module.weight
    if isinstance(module, nn.Linear):
        return weight.shape[1]
    if isinstance(module, nn.ConvTranspose2d):  # weight (in, out, kh, kw)
        return weight.shape[0] * weight.shape[2] * weight.shape[3]
    if isinstance(module, nn.Conv2d):  # weight (out, in, kh, kw)
        return weight[0].numel()
    return weight.shape[0] * weight.shape[1]  # BlockLinear: weight (blocks, in, out)


def init_weights(module: nn.Module) -> nn.Module:
    """The official DreamerV3 initialisation of every layer inside `module`: weights from a
    normal truncated at 2 standard deviations, rescaled to std 1 / sqrt(fan_in); biases zero.

    PyTorch's default (uniform, with non-zero biases) gives a smaller spread and random
    offsets. Output layers that must start elsewhere (zero heads, the actor's 0.01) are
    rescaled afterwards by their owners with `scale_output`. Returns `module`.
    """
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, BlockLinear)):
            with torch.no_grad():
                # A truncated standard normal on [-2, 2] has std 0.8796; 1.1368 makes it 1.
                nn.init.trunc_normal_(layer.weight, 0.0, 1.0, -2.0, 2.0)
                layer.weight.mul_(1.1368 / fan_in(layer) ** 0.5)
                if layer.bias is not None:
                    layer.bias.zero_()
    return module


def scale_output(layer: nn.Module, scale: float) -> None:
    """Multiply a layer's initial weights by `scale` (0 gives a head that predicts exactly 0
    at first; the official actor uses 0.01, so the first policy is close to uniform)."""
    with torch.no_grad():
        layer.weight.mul_(scale)
        if layer.bias is not None:
            layer.bias.zero_()


@contextmanager
def frozen(*modules: nn.Module):
    """Gradients flow through these modules to their inputs, but not into their parameters."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class BlockLinear(nn.Module):
    """G blocks of a linear layer, each with its own weight, that may share part of their input.

    Block g maps concat(own[:, g], shared) to out[:, g]: own (N, G, I_own), shared
    (N, I_shared) or None -> (N, G, out). The shared part goes through one matrix product for
    all blocks at once, which gives the same result as copying it into every block but costs
    no copies and runs as one large (fast) product instead of G small ones.
    """

    def __init__(self, blocks: int, own_dim: int, shared_dim: int, out_dim: int):
        super().__init__()
        self.own_dim = own_dim
        self.weight = nn.Parameter(torch.empty(blocks, own_dim + shared_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(blocks, out_dim))
        init_weights(self)

    def forward(self, own: torch.Tensor, shared: torch.Tensor | None = None) -> torch.Tensor:
        weight = self.weight.to(own.dtype)
        G, _, out = weight.shape
        x = torch.einsum("ngi,gio->ngo", own, weight[:, : self.own_dim])  # (N, G, out)
        if shared is not None:
            shared_weight = weight[:, self.own_dim :].transpose(0, 1).reshape(-1, G * out)
            x = x + (shared.to(own.dtype) @ shared_weight).reshape(-1, G, out)
        return x + self.bias.to(own.dtype)


class RMSNorm(nn.Module):
    """x / rms(x) * scale over the last dims, computed in float32 whatever the autocast
    precision (bfloat16 sums of squares lose too much), returned in the input's dtype.

    eps 1e-4 is the official value: it keeps the division tame for near-zero inputs (the
    all-zero state an episode starts from)."""

    def __init__(self, shape, eps: float = 1e-4):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(shape))
        self.dims = tuple(range(-len(self.scale.shape), 0))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float()
        y = y * torch.rsqrt(y.square().mean(self.dims, keepdim=True) + self.eps)
        return (y * self.scale).to(x.dtype)


class MLP(nn.Module):
    """`layers` hidden layers of Linear -> RMSNorm -> SiLU; (..., in_dim) -> (..., units)."""

    def __init__(self, in_dim: int, units: int, layers: int):
        super().__init__()
        blocks = []
        for i in range(layers):
            blocks += [nn.Linear(in_dim if i == 0 else units, units), RMSNorm(units), nn.SiLU()]
        self.net = nn.Sequential(*blocks)
        self.out_dim = units if layers > 0 else in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # As rows of a matrix: a strided 3-D input (a slice of imagined features) would
        # otherwise reach the compiled graph as a batched product with the weight copied
        # once per row (1024 x 2560 x 256 in bf16: 2.2 s per update on the 12m model).
        rows = x.reshape(-1, x.shape[-1])  # (N, in_dim), copied only where x is strided
        return self.net(rows).reshape(*x.shape[:-1], -1)  # (..., units)


class ImageEncoder(nn.Module):
    """Strided convolutions, each halving the image: (..., H, W, 3) uint8 -> (..., out_dim)."""

    def __init__(self, image_size: int, depth: int, mults: tuple):
        super().__init__()
        layers, channels = [], 3
        for mult in mults:
            layers += [nn.Conv2d(channels, depth * mult, 4, 2, 1), ChannelNorm(depth * mult)]
            layers += [nn.SiLU()]
            channels = depth * mult
        self.net = nn.Sequential(*layers)
        side = image_size // 2 ** len(mults)
        self.out_dim = channels * side * side

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        batch_shape = image.shape[:-3]
        x = image.reshape(-1, *image.shape[-3:]).permute(0, 3, 1, 2)  # (N, 3, H, W)
        x = x.float() / 255.0 - 0.5
        x = self.net(x)  # (N, C, h, w)
        return x.reshape(*batch_shape, -1)  # (..., C * h * w)


class ImageDecoder(nn.Module):
    """Mirror of the encoder: (..., feat_dim) -> (..., H, W, 3) image in [-0.5, 0.5] units."""

    def __init__(self, feat_dim: int, image_size: int, depth: int, mults: tuple):
        super().__init__()
        self.side = image_size // 2 ** len(mults)
        self.channels = depth * mults[-1]
        self.linear = nn.Linear(feat_dim, self.channels * self.side**2)
        # The first map is normalised and activated like every other layer (official).
        self.linear_norm = RMSNorm(self.channels)  # over the channels of an (N, h, w, C) map
        layers, channels = [], self.channels
        for mult in reversed(mults[:-1]):
            layers += [nn.ConvTranspose2d(channels, depth * mult, 4, 2, 1)]
            layers += [ChannelNorm(depth * mult), nn.SiLU()]
            channels = depth * mult
        layers += [nn.ConvTranspose2d(channels, 3, 4, 2, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        batch_shape = feat.shape[:-1]
        # Channels-last maps ((N, h, w, C) in memory) run the convolutions faster on a CPU and
        # make ChannelNorm's permutes free; the encoder gets them from the NHWC images.
        x = self.linear(feat).reshape(-1, self.side, self.side, self.channels)  # (N, h, w, C)
        x = nn.functional.silu(self.linear_norm(x))
        x = self.net(x.permute(0, 3, 1, 2))  # (N, 3, H, W), channels-last in memory
        return x.permute(0, 2, 3, 1).reshape(*batch_shape, *x.shape[2:], 3)  # (..., H, W, 3)


class ChannelNorm(RMSNorm):
    """RMSNorm over the channels of an (N, C, H, W) feature map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class MultiEncoder(nn.Module):
    """Encodes a dict observation: each kind through its own encoder, then concatenated.

    obs_space maps "image" -> (H, W, 3) and/or "vector" -> (N,). forward takes a dict of
    (..., *shape) tensors and returns the (..., out_dim) embedding.
    """

    def __init__(self, obs_space: dict, sizes: dict):
        super().__init__()
        self.image = self.vector = None
        self.out_dim = 0
        if "image" in obs_space:
            size = obs_space["image"][0][0]
            self.image = ImageEncoder(size, sizes["cnn_depth"], sizes["cnn_mults"])
            self.out_dim += self.image.out_dim
        if "vector" in obs_space:
            dim = obs_space["vector"][0][0]
            self.vector = MLP(dim, sizes["units"], sizes["mlp_layers"])
            self.out_dim += self.vector.out_dim

    def forward(self, obs: dict) -> torch.Tensor:
        parts = []
        if self.image is not None:
            parts.append(self.image(obs["image"]))
        if self.vector is not None:
            parts.append(self.vector(symlog(obs["vector"].float())))
        return torch.cat(parts, -1)  # (..., out_dim)


class MultiDecoder(nn.Module):
    """Reconstructs each observation kind from the model state; returns per-kind losses."""

    def __init__(self, feat_dim: int, obs_space: dict, sizes: dict):
        super().__init__()
        self.image = self.vector = None
        if "image" in obs_space:
            size = obs_space["image"][0][0]
            self.image = ImageDecoder(feat_dim, size, sizes["cnn_depth"], sizes["cnn_mults"])
        if "vector" in obs_space:
            dim = obs_space["vector"][0][0]
            mlp = MLP(feat_dim, sizes["units"], sizes["mlp_layers"])
            self.vector = nn.Sequential(mlp, nn.Linear(mlp.out_dim, dim))

    def forward(self, feat: torch.Tensor) -> dict:
        """(..., feat_dim) -> dict of predictions: image (..., H, W, 3), vector in symlog space."""
        out = {}
        if self.image is not None:
            out["image"] = self.image(feat)
        if self.vector is not None:
            out["vector"] = self.vector(feat)
        return out

    def loss(self, feat: torch.Tensor, obs: dict) -> dict:
        """Per-kind reconstruction losses of shape (...): squared error summed over elements.

        Images: target x / 255 - 0.5 (no symlog); vectors: target symlog(x)
        (paper, "Robust predictions": symlog).
        """
        pred, losses = self(feat), {}
        if self.image is not None:
            target = obs["image"].float() / 255.0 - 0.5
            losses["image"] = (pred["image"].float() - target).square().sum((-3, -2, -1))
        if self.vector is not None:
            target = symlog(obs["vector"].float())
            losses["vector"] = (pred["vector"].float() - target).square().sum(-1)
        return losses


class TwoHotHead(nn.Module):
    """MLP with a zero-initialised output layer over two-hot bins; returns a TwoHotDist.

    Zero weights make every bin equally likely, so a fresh head predicts exactly 0 (pitfall 4).
    """

    def __init__(self, in_dim: int, units: int, layers: int, bins: int):
        super().__init__()
        self.mlp = MLP(in_dim, units, layers)
        self.out = nn.Linear(self.mlp.out_dim, bins)
        init_weights(self)
        scale_output(self.out, 0.0)

    def forward(self, x: torch.Tensor) -> TwoHotDist:
        return TwoHotDist(self.out(self.mlp(x)))


class ContinueHead(nn.Module):
    """Predicts the logit of a Bernoulli "episode continues" variable: (..., in) -> (...)."""

    def __init__(self, in_dim: int, units: int, layers: int):
        super().__init__()
        self.mlp = MLP(in_dim, units, layers)
        self.out = nn.Linear(self.mlp.out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.mlp(x)).squeeze(-1)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def check_image_size(size: int, mults: tuple) -> None:
    """Raise a clear error when the CNN cannot take images of this size."""
    factor = 2 ** len(mults)
    if size % factor or size < factor:
        raise ValueError(
            f"image size {size} cannot go through {len(mults)} stride-2 convolutions: "
            f"use a multiple of {factor} (64 is the paper's)"
        )
