"""The eight DEIMv2 variants: one frozen record each, the single source of truth.

Architecture numbers, input size, normalization, training recipe and the published figures of
every variant live here and nowhere else. Numbers follow the official DEIMv2 configs
(Intellindust-AI-Lab/DEIMv2, commit 0fff8d4) and the paper's tables. No torch import.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import UnknownVariantError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """Which backbone, where it is tapped, and the spatial tuning adapter (ViT variants only).

    `name` is an HGNetv2 config ('B0', 'Pico', 'Femto', 'Atto') or a ViT config ('vit_tiny',
    'vit_tinyplus', 'dinov3_vits16', 'dinov3_vits16plus'); `taps` are HGNetv2 stage indices or
    ViT block indices.
    """

    name: str
    taps: tuple[int, ...]
    sta_channels: int = 0  # STA conv_inplane; 0 for HGNetv2
    sta_hidden: int = 0  # channels of the fused ViT+STA maps


@dataclass(frozen=True)
class EncoderSpec:
    """LiteEncoder ('lite') or HybridEncoder ('hybrid', flavour 'dfine' or 'deim')."""

    kind: str
    in_channels: tuple[int, ...]
    in_strides: tuple[int, ...]
    hidden_dim: int
    expansion: float
    depth_mult: float
    dim_feedforward: int = 0  # AIFI layer of the hybrid encoder
    version: str = ""  # hybrid flavour


@dataclass(frozen=True)
class DecoderSpec:
    """The D-FINE-lineage decoder with DEIMv2's options; defaults are shared by all variants."""

    hidden_dim: int
    feat_strides: tuple[int, ...]
    num_layers: int
    num_queries: int
    num_points: tuple[int, ...]
    dim_feedforward: int
    use_gateway: bool
    share_bbox_head: bool
    nhead: int = 8
    reg_max: int = 32
    reg_scale: float = 4.0
    layer_scale: float = 1.0
    eval_idx: int = -1
    num_denoising: int = 100
    label_noise_ratio: float = 0.5
    box_noise_scale: float = 1.0
    activation: str = "silu"

    @property
    def num_levels(self) -> int:
        return len(self.feat_strides)


@dataclass(frozen=True)
class TrainRecipe:
    """The official training recipe of a variant (epochs and batch at full COCO scale)."""

    epochs: int
    lr: float
    backbone_lr: float
    weight_decay: float
    total_batch_size: int
    warmup_iters: int
    flat_epoch: int
    no_aug_epoch: int
    lr_gamma: float
    aug_policy_epochs: tuple[int, int, int]  # Dense O2O on at [0], mosaic/photometric policy stops at [2]
    mosaic_prob: float
    mosaic_output_size: int
    mixup_prob: float
    mixup_epochs: tuple[int, int]
    copyblend_prob: float
    copyblend_epochs: tuple[int, int]
    stop_epoch: int  # multi-scale batches stop here
    base_size_repeat: int | None
    min_box_size: int  # SanitizeBoundingBoxes min_size
    matcher_change_epoch: int
    use_fgl_ddf: bool  # ultra-light variants train without FGL and DDF
    use_uni_set: bool = True
    betas: tuple[float, float] = (0.9, 0.999)
    ema_decay: float = 0.9999
    ema_warmups: int = 1000
    clip_max_norm: float = 0.1
    loss_weights: dict = field(
        default_factory=lambda: {"mal": 1.0, "bbox": 5.0, "giou": 2.0, "fgl": 0.15, "ddf": 1.5}
    )
    mal_gamma: float = 1.5
    mal_alpha: float = 0.75
    matcher_costs: dict = field(default_factory=lambda: {"class": 2.0, "bbox": 5.0, "giou": 2.0})
    matcher_focal_alpha: float = 0.25
    matcher_focal_gamma: float = 2.0
    matcher_iou_order: float = 4.0
    copyblend_area_threshold: int = 100
    copyblend_num_objects: int = 3
    copyblend_expand_ratios: tuple[float, float] = (0.1, 0.25)


@dataclass(frozen=True)
class Published:
    """Figures from the DEIMv2 paper and its measured reference model."""

    params_train: int
    params_deploy: int
    gflops: float  # at the default input size, calflops
    coco_ap: float
    t4_trt_fp16_ms: float


@dataclass(frozen=True)
class Variant:
    """Everything that defines one DEIMv2 variant."""

    name: str
    input_size: int  # default (eval) square size
    mean: tuple[float, float, float] | None  # None: pixels / 255 only
    std: tuple[float, float, float] | None
    backbone: BackboneSpec
    encoder: EncoderSpec
    decoder: DecoderSpec
    recipe: TrainRecipe
    published: Published
    num_classes: int = 80
    num_top_queries: int = 300  # detections the official postprocessor returns

    @property
    def ultra_light(self) -> bool:
        return self.encoder.kind == "lite"


def _light(name, size, backbone, channels, hidden, queries, ff, lr, backbone_lr, mosaic_prob, min_box, published):
    """The three HGNetv2 + LiteEncoder variants share everything but these numbers."""
    return Variant(
        name=name,
        input_size=size,
        mean=None,
        std=None,
        backbone=BackboneSpec(backbone, (2,)),
        encoder=EncoderSpec("lite", (channels,), (16,), hidden, 0.34, 0.5),
        decoder=DecoderSpec(hidden, (16, 32), 3, queries, (4, 2), ff, use_gateway=False, share_bbox_head=True),
        recipe=TrainRecipe(
            epochs=500, lr=lr, backbone_lr=backbone_lr, weight_decay=1e-4, total_batch_size=128,
            warmup_iters=4000, flat_epoch=250, no_aug_epoch=32, lr_gamma=0.5, aug_policy_epochs=(4, 250, 400),
            mosaic_prob=mosaic_prob, mosaic_output_size=size // 2, mixup_prob=0.0, mixup_epochs=(40000, 15000),
            copyblend_prob=0.0, copyblend_epochs=(40000, 15000), stop_epoch=468, base_size_repeat=None,
            min_box_size=min_box, matcher_change_epoch=450, use_fgl_ddf=False, use_uni_set=name != "deimv2-atto",
        ),
        published=published,
    )


def _vit(name, backbone, taps, sta, hidden, expansion, depth_mult, enc_ff, layers, dec_ff, recipe, published):
    """The four ViT + STA + HybridEncoder ('deim' flavour) variants."""
    return Variant(
        name=name,
        input_size=640,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        backbone=BackboneSpec(backbone, taps, sta, hidden),
        encoder=EncoderSpec("hybrid", (hidden,) * 3, (8, 16, 32), hidden, expansion, depth_mult, enc_ff, "deim"),
        decoder=DecoderSpec(hidden, (8, 16, 32), layers, 300, (3, 6, 3), dec_ff, use_gateway=True, share_bbox_head=False),
        recipe=recipe,
        published=published,
    )


def _vit_recipe(epochs, backbone_lr, weight_decay, flat, no_aug, policy, mixup_end, stop, repeat, change):
    return TrainRecipe(
        epochs=epochs, lr=5e-4, backbone_lr=backbone_lr, weight_decay=weight_decay, total_batch_size=32,
        warmup_iters=2000, flat_epoch=flat, no_aug_epoch=no_aug, lr_gamma=0.5, aug_policy_epochs=policy,
        mosaic_prob=0.5, mosaic_output_size=320, mixup_prob=0.5, mixup_epochs=(4, mixup_end), copyblend_prob=0.5,
        copyblend_epochs=(4, stop), stop_epoch=stop, base_size_repeat=repeat, min_box_size=1,
        matcher_change_epoch=change, use_fgl_ddf=True,
    )


_ALL = (
    _light("deimv2-atto", 320, "Atto", 256, 64, 100, 160, 2e-3, 1e-3, 0.3, 12,
           Published(508_985, 494_159, 0.763, 23.8, 1.10)),
    _light("deimv2-femto", 416, "Femto", 512, 96, 150, 256, 1.6e-3, 8e-4, 0.5, 10,
           Published(983_945, 962_311, 1.671, 31.0, 1.45)),
    _light("deimv2-pico", 640, "Pico", 512, 112, 200, 320, 1.6e-3, 8e-4, 0.5, 8,
           Published(1_539_539, 1_514_285, 5.152, 38.5, 2.13)),
    Variant(
        name="deimv2-n",
        input_size=640,
        mean=None,
        std=None,
        backbone=BackboneSpec("B0", (2, 3)),
        encoder=EncoderSpec("hybrid", (512, 1024), (16, 32), 128, 0.34, 0.5, 512, "dfine"),
        decoder=DecoderSpec(128, (16, 32), 3, 300, (6, 6), 512, use_gateway=True, share_bbox_head=False),
        recipe=TrainRecipe(
            epochs=160, lr=8e-4, backbone_lr=4e-4, weight_decay=1e-4, total_batch_size=32, warmup_iters=2000,
            flat_epoch=7800, no_aug_epoch=12, lr_gamma=1.0, aug_policy_epochs=(4, 78, 148), mosaic_prob=0.5,
            mosaic_output_size=320, mixup_prob=0.5, mixup_epochs=(4, 78), copyblend_prob=0.4,
            copyblend_epochs=(4, 78), stop_epoch=148, base_size_repeat=None, min_box_size=1,
            matcher_change_epoch=136, use_fgl_ddf=True,
        ),
        published=Published(3_600_421, 3_571_527, 6.865, 43.0, 2.32),
    ),
    _vit("deimv2-s", "vit_tiny", (3, 7, 11), 16, 192, 0.34, 0.67, 512, 4, 512,
         _vit_recipe(132, 2.5e-5, 1e-4, 64, 12, (4, 64, 120), 64, 120, 20, 100),
         Published(9_779_838, 9_707_403, 25.624, 50.9, 5.78)),
    _vit("deimv2-m", "vit_tinyplus", (3, 7, 11), 16, 256, 0.67, 1.0, 512, 4, 512,
         _vit_recipe(102, 2.5e-5, 1e-4, 49, 12, (4, 49, 90), 49, 90, 6, 80),
         Published(18_357_750, 18_106_355, 52.202, 53.0, 8.80)),
    _vit("deimv2-l", "dinov3_vits16", (5, 8, 11), 32, 224, 1.0, 1.0, 896, 4, 1792,
         _vit_recipe(68, 1.25e-5, 1.25e-4, 34, 8, (4, 34, 60), 34, 60, 3, 50),
         Published(32_551_214, 32_178_043, 96.737, 56.0, 10.47)),
    _vit("deimv2-x", "dinov3_vits16plus", (5, 8, 11), 64, 256, 1.25, 1.37, 1024, 6, 2048,
         _vit_recipe(58, 1e-5, 1.25e-4, 29, 8, (4, 29, 50), 29, 50, 3, 45),
         Published(51_211_736, 50_260_163, 151.631, 57.8, 13.75)),
)

VARIANTS: dict[str, Variant] = {v.name: v for v in _ALL}


def get_variant(name: str | Variant) -> Variant:
    """The record of a variant; accepts 'deimv2-pico', 'pico' or 'DEIMv2-Pico'."""
    if isinstance(name, Variant):
        return name
    key = str(name).strip().lower()
    key = key if key.startswith("deimv2-") else f"deimv2-{key}"
    if key not in VARIANTS:
        raise UnknownVariantError(f"unknown variant {name!r}; choose one of: {', '.join(VARIANTS)}")
    return VARIANTS[key]
