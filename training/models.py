"""Model registry: the papers' backbones, any timm model, and optional adaptation networks in front.

``create_model(name, num_classes, image_size, block_size, adapt=..., **kw)``, timm-style. The project's
own names come first:

* ``convmixer`` — timm's ConvMixer of any ``width``/``depth``/``patch``/``kernel`` (Trockman & Kolter; the
  EtC paper uses 256/8 patch 1 kernel 9 on CIFAR-10 and 384/8 patch 4 kernel 9 on Imagenette);
  ``depthwise="fft"`` or ``"triton"`` computes its depthwise convolutions another way
  (:mod:`training.depthwise`: same parameters and result), alternatives to PyTorch's depthwise kernels,
  whose backward pass is slow for large kernels on GPUs (pytorch/pytorch#18631);
* ``vit`` — timm's VisionTransformer with patch size = the scheme's block size (EtC paper, sec. III-C:
  patch embedding absorbs a block-wise cipher only when patches and blocks coincide);
* ``resnet18`` — timm's ResNet-18 with a CIFAR stem (3×3 stride-1 first conv, no max-pool) for small
  images, as in Sirichotedumrong et al.

Any other name timm knows (``timm.list_models()``, e.g. ``mobilenetv3_small_050``, ``resnet10t``,
``vit_tiny_patch16_224``) is built by ``timm.create_model`` with the dataset's class count, its image
size where the model takes one (``img_size``), ``patch`` as ``patch_size`` where it takes one, and no
pretrained weights (nothing is downloaded). An option a model does not take is refused, not ignored.
``adapt="pe"`` / ``adapt="block"`` put :mod:`training.adaptation`'s networks in front of any of them
(``adapt_block``: the block adaptation's block size where the scheme has none, e.g. Tanaka's M = 4 for
the cat map).

Two registries, one definition of each name: backbones (:data:`MODELS`) and adaptation networks
(:data:`ADAPTATIONS`). ``training.train``'s ``--model`` / ``--adapt`` choices, its error lines
and ``--resume``'s architecture check read them, so a name is added in one place.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable

import torch
from torch import nn

from training.adaptation import Adapted, BlockAdaptation, PEAdaptation
from training.depthwise import replace_depthwise
from training.errors import first_line


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
ARCHITECTURE_FIELDS = ("width", "depth", "patch", "kernel")
OPTIONS = (*ARCHITECTURE_FIELDS, "depthwise")  # what a model may take besides classes and image size


def list_models() -> list[str]:
    """The project's own model names (any timm model name is accepted besides)."""
    return sorted(MODELS.builders)


def list_adaptations() -> list[str]:
    """The names ``--adapt`` and :func:`create_model` accept, ``none`` first."""
    return [NO_ADAPTATION, *ADAPTATIONS.builders]


def is_timm_model(name: str) -> bool:
    import timm

    return name not in MODELS.builders and timm.is_model(name)


def known_model(name: str) -> bool:
    """A project model or a timm model name."""
    return name in MODELS.builders or is_timm_model(name)


def unknown_model(name: str, what: str = "model") -> ValueError:
    """The refusal of a name nobody builds, with the closest names lcrypt and timm know."""
    import timm

    names = list(dict.fromkeys(list_models() + timm.list_models()))
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    hint = (f"close matches: {', '.join(close)}" if close else
            "no close match (`python -c \"import timm; print(timm.list_models('*net*'))\"` lists timm's)")
    return ValueError(f"unknown {what} {name!r}: neither lcrypt's ({', '.join(list_models())}) nor a timm "
                      f"model; {hint}")


@MODELS.register("convmixer")
def convmixer(num_classes: int, image_size: int, block_size: int | None = None, width: int = 256,
              depth: int = 8, patch: int = 1, kernel: int = 9, depthwise: str = "direct") -> nn.Module:
    from timm.models.convmixer import ConvMixer

    model = ConvMixer(dim=width, depth=depth, kernel_size=kernel, patch_size=patch, num_classes=num_classes)
    return replace_depthwise(model, depthwise)


@MODELS.register("vit")
def vit(num_classes: int, image_size: int, block_size: int | None = None, width: int = 192, depth: int = 6,
        patch: int | None = None, heads: int | None = None) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    patch = patch or block_size or 4
    if image_size % patch:
        raise ValueError(f"ViT patch size {patch} does not divide the image size {image_size}")
    return VisionTransformer(img_size=image_size, patch_size=patch, embed_dim=width, depth=depth,
                             num_heads=heads or max(1, width // 64), num_classes=num_classes)


@MODELS.register("resnet18")
def resnet18(num_classes: int, image_size: int, block_size: int | None = None) -> nn.Module:
    import timm

    model = timm.create_model("resnet18", num_classes=num_classes, pretrained=False)
    if image_size <= 64:  # CIFAR stem
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    return model


def timm_model(name: str, num_classes: int, image_size: int, patch: int | None = None) -> nn.Module:
    """``timm.create_model(name)`` without pretrained weights, for this image size where it takes one."""
    import timm

    kwargs: dict[str, Any] = {"num_classes": num_classes, "pretrained": False}
    if patch is not None:
        kwargs["patch_size"] = patch
    for sized in (True, False):
        try:
            return timm.create_model(name, **kwargs, **({"img_size": image_size} if sized else {}))
        except TypeError as exc:  # the model's constructor names the keyword it does not take
            if sized and "img_size" in str(exc):
                continue
            if "patch_size" in str(exc):
                raise ValueError(f"--patch does not apply to {name}: it has no patch size") from None
            raise ValueError(f"timm cannot build {name}: {first_line(exc)}") from None
        except Exception as exc:  # timm's builders raise many kinds (assertions on sizes, ...)
            raise ValueError(f"timm cannot build {name}: {first_line(exc)}") from None
    raise AssertionError("unreachable")


def options_taken(name: str) -> tuple[str, ...]:
    """The options of :data:`OPTIONS` that ``name`` takes (timm models: ``patch``)."""
    if name in MODELS.builders:
        return tuple(o for o in OPTIONS if o in inspect.signature(MODELS.builders[name]).parameters)
    if is_timm_model(name):
        return ("patch",)
    raise unknown_model(name)


def check_options(name: str, given: dict[str, Any]) -> None:
    """Refuse an option ``name`` does not take (it would change nothing, silently)."""
    taken = options_taken(name)
    for option, value in given.items():
        if value is not None and option not in taken:
            takes = f"it takes {', '.join('--' + o for o in taken)}" if taken else "it takes no model options"
            if is_timm_model(name):
                takes = "a timm model's size comes with its name; only --patch, where it has a patch size"
            raise ValueError(f"--{option} does not apply to {name} ({takes})")


@ADAPTATIONS.register("pe")
def pe_adaptation(block_size: int | None) -> nn.Module:
    return PEAdaptation()


@ADAPTATIONS.register("block")
def block_adaptation(block_size: int | None) -> nn.Module:
    if not block_size:
        raise ValueError("--adapt block needs a block size and the scheme has none: give --adapt-block M "
                         "(Tanaka 2018: 4)")
    return BlockAdaptation(block_size)


def architecture(name: str, adapt: str | None = None, adapt_block: int | None = None, **kwargs: Any
                 ) -> dict[str, Any]:
    """What decides the shapes of ``name``'s parameters: name, adaptation network (and its own block
    size when given) and those of width/depth/patch/kernel the model takes, each as given or else the
    builder's default (timm models: ``patch`` when given).

    ``--resume`` compares this between a checkpoint and the run (how the depthwise convolutions are
    computed is left out: it does not change the weights).
    """
    taken = options_taken(name)
    out: dict[str, Any] = {"name": name, "adapt": adapt or NO_ADAPTATION}
    if adapt_block is not None:
        out["adapt_block"] = adapt_block
    params = inspect.signature(MODELS.builders[name]).parameters if name in MODELS.builders else {}
    for field in ARCHITECTURE_FIELDS:
        if field in taken and (kwargs.get(field) is not None or field in params):
            given = kwargs.get(field)
            out[field] = given if given is not None else params[field].default
    return out


def create_model(name: str, num_classes: int, image_size: int, block_size: int | None = None,
                 adapt: str | None = None, adapt_block: int | None = None, **kwargs: Any) -> nn.Module:
    """Build ``name`` for ``num_classes`` and square ``image_size``, with an optional adaptation network."""
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    check_options(name, kwargs)
    if name in MODELS.builders:
        backbone = MODELS.builders[name](num_classes=num_classes, image_size=image_size,
                                         block_size=block_size, **kwargs)
    else:
        backbone = timm_model(name, num_classes, image_size, **kwargs)
    if adapt in (None, "", NO_ADAPTATION):
        if adapt_block is not None:
            raise ValueError("--adapt-block applies to --adapt block only")
        return backbone
    if adapt not in ADAPTATIONS.builders:
        *first, last = list_adaptations()
        raise ValueError(f"unknown adaptation {adapt!r}; choose {', '.join(first)} or {last}")
    if adapt_block is not None and adapt != "block":
        raise ValueError("--adapt-block applies to --adapt block only")
    return Adapted(ADAPTATIONS.builders[adapt](adapt_block or block_size), backbone)


def check_input(model: nn.Module, image_size: int) -> None:
    """Refuse a model that cannot take ``image_size`` images (one forward pass of one black image)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size))
    except Exception as exc:  # a size error surfaces as RuntimeError, AssertionError, ValueError...
        raise ValueError(f"it cannot take the dataset's {image_size}x{image_size} images: "
                         f"{first_line(exc)}") from None
    finally:
        model.train(was_training)


def patch_mismatch(model: nn.Module, block_size: int | None) -> str | None:
    """Why a patch-embedding model (one with ``patch_embed``: ViT, Swin, ...) will learn a block-wise
    cipher poorly, or None: its patch embedding absorbs the cipher only when each patch is exactly one
    block (MaungMaung & Kiya 2022, sec. III-C). ConvMixer is not held to it (no position embedding, and
    its large kernels learn across blocks, same paper), nor a model behind an adaptation network."""
    embed = getattr(model, "patch_embed", None)
    if not block_size or isinstance(model, Adapted) or embed is None:
        return None
    size = getattr(embed, "patch_size", None)
    patch = size[0] if isinstance(size, (tuple, list)) else size
    if not isinstance(patch, int) or patch == block_size:
        return None
    how = (f"each patch holds {(patch // block_size) ** 2} blocks" if patch % block_size == 0
           else "patches cut across blocks")
    return (f"its {patch}x{patch} patches do not line up with the scheme's {block_size}x{block_size} "
            f"blocks ({how}): a patch embedding absorbs a block-wise cipher only when each patch is "
            f"one block (MaungMaung & Kiya 2022, sec. III-C), so expect lower accuracy; --patch "
            f"{block_size} lines them up")
