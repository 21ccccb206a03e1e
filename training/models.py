"""Model registry: the papers' backbones, built from timm, with optional adaptation networks in front.

``create_model(name, num_classes, image_size, block_size, adapt=..., **kw)``, timm-style:

* ``convmixer`` — timm's ConvMixer of any ``width``/``depth``/``patch``/``kernel`` (Trockman & Kolter; the
  EtC paper uses 256/8 patch 1 kernel 9 on CIFAR-10 and 384/8 patch 4 kernel 9 on Imagenette);
  ``depthwise="fft"`` or ``"triton"`` computes its depthwise convolutions another way
  (:mod:`training.depthwise`: same parameters and result), alternatives to PyTorch's depthwise kernels,
  whose backward pass is slow for large kernels on GPUs (pytorch/pytorch#18631);
* ``vit`` — timm's VisionTransformer with patch size = the scheme's block size (EtC paper, sec. III-C:
  patch embedding absorbs a block-wise cipher only when patches and blocks coincide);
* ``resnet18`` — timm's ResNet-18 with a CIFAR stem (3×3 stride-1 first conv, no max-pool) for small
  images, as in Sirichotedumrong et al.;
* ``adapt="pe"`` / ``adapt="block"`` put :mod:`training.adaptation`'s networks in front of any of them.

Two registries, one definition of each name: backbones (:data:`MODELS`) and adaptation networks
(:data:`ADAPTATIONS`). ``training.train``'s ``--model`` / ``--adapt`` choices, its error lines
and ``--resume``'s architecture check read them, so a name is added in one place.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from torch import nn

from training.adaptation import Adapted, BlockAdaptation, PEAdaptation
from training.depthwise import replace_depthwise


class Registry:
    """Builders by name, each added with the ``@registry.register(name)`` decorator."""

    def __init__(self) -> None:
        self.builders: dict[str, Callable[..., nn.Module]] = {}

    def register(self, name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
        def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
            self.builders[name] = fn
            return fn
        return deco


MODELS = Registry()  # fn(num_classes, image_size, block_size, **options) -> backbone
ADAPTATIONS = Registry()  # fn(block_size) -> network from 3 channels to 3 at the same resolution
NO_ADAPTATION = "none"


def list_models() -> list[str]:
    """The names ``--model`` and :func:`create_model` accept."""
    return sorted(MODELS.builders)


def list_adaptations() -> list[str]:
    """The names ``--adapt`` and :func:`create_model` accept, ``none`` first."""
    return [NO_ADAPTATION, *ADAPTATIONS.builders]


def _unknown_model(name: str) -> ValueError:
    return ValueError(f"unknown model {name!r}; choose one of {', '.join(list_models())}")


@MODELS.register("convmixer")
def convmixer(num_classes: int, image_size: int, block_size: int | None = None, width: int = 256,
              depth: int = 8, patch: int = 1, kernel: int = 9, depthwise: str = "direct", **_: Any
              ) -> nn.Module:
    from timm.models.convmixer import ConvMixer

    model = ConvMixer(dim=width, depth=depth, kernel_size=kernel, patch_size=patch, num_classes=num_classes)
    return replace_depthwise(model, depthwise)


@MODELS.register("vit")
def vit(num_classes: int, image_size: int, block_size: int | None = None, width: int = 192, depth: int = 6,
        patch: int | None = None, heads: int | None = None, **_: Any) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    patch = patch or block_size or 4
    if image_size % patch:
        raise ValueError(f"ViT patch size {patch} does not divide the image size {image_size}")
    return VisionTransformer(img_size=image_size, patch_size=patch, embed_dim=width, depth=depth,
                             num_heads=heads or max(1, width // 64), num_classes=num_classes)


@MODELS.register("resnet18")
def resnet18(num_classes: int, image_size: int, block_size: int | None = None, **_: Any) -> nn.Module:
    import timm

    model = timm.create_model("resnet18", num_classes=num_classes, pretrained=False)
    if image_size <= 64:  # CIFAR stem
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    return model


@ADAPTATIONS.register("pe")
def pe_adaptation(block_size: int | None) -> nn.Module:
    return PEAdaptation()


@ADAPTATIONS.register("block")
def block_adaptation(block_size: int | None) -> nn.Module:
    if not block_size:
        raise ValueError("--adapt block needs a block-wise scheme (the manifest's block size is empty)")
    return BlockAdaptation(block_size)


ARCHITECTURE_FIELDS = ("width", "depth", "patch", "kernel")


def architecture(name: str, adapt: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """What decides the shapes of ``name``'s parameters: name, adaptation network and those of
    width/depth/patch/kernel the model takes, each as given or else the builder's default.

    ``--resume`` compares this between a checkpoint and the run (how the depthwise convolutions are
    computed is left out: it does not change the weights).
    """
    if name not in MODELS.builders:
        raise _unknown_model(name)
    params = inspect.signature(MODELS.builders[name]).parameters
    out: dict[str, Any] = {"name": name, "adapt": adapt or NO_ADAPTATION}
    for field in ARCHITECTURE_FIELDS:
        if field in params:
            given = kwargs.get(field)
            out[field] = given if given is not None else params[field].default
    return out


def create_model(name: str, num_classes: int, image_size: int, block_size: int | None = None,
                 adapt: str | None = None, **kwargs: Any) -> nn.Module:
    """Build ``name`` for ``num_classes`` and square ``image_size``, with an optional adaptation network."""
    if name not in MODELS.builders:
        raise _unknown_model(name)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    backbone = MODELS.builders[name](num_classes=num_classes, image_size=image_size, block_size=block_size,
                                     **kwargs)
    if adapt in (None, "", NO_ADAPTATION):
        return backbone
    if adapt not in ADAPTATIONS.builders:
        *first, last = list_adaptations()
        raise ValueError(f"unknown adaptation {adapt!r}; choose {', '.join(first)} or {last}")
    return Adapted(ADAPTATIONS.builders[adapt](block_size), backbone)
