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
    activation: str = "silu"


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
    eval_idx: int = -1
    num_denoising: int = 100
    label_noise_ratio: float = 0.5
    box_noise_scale: float = 1.0
    activation: str = "silu"

    @property
    def num_levels(self) -> int:
        return len(self.feat_strides)


@dataclass(frozen=True)
class LossWeights:
    """DEIM criterion weights: MAL, L1 box, GIoU, fine-grained localization, decoupled distillation."""

    mal: float = 1.0
    bbox: float = 5.0
    giou: float = 2.0
    fgl: float = 0.15
    ddf: float = 1.5


@dataclass(frozen=True)
class MatcherCosts:
    """Hungarian matcher costs (class cost by focal loss)."""

    cls: float = 2.0
    bbox: float = 5.0
    giou: float = 2.0


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
    head_bias_weight_decay: bool = False  # Atto's config leaves encoder/decoder biases under weight decay
    betas: tuple[float, float] = (0.9, 0.999)
    ema_decay: float = 0.9999
    ema_warmups: int = 1000
    clip_max_norm: float = 0.1
    loss_weights: LossWeights = field(default_factory=LossWeights)
    mal_gamma: float = 1.5
    matcher_costs: MatcherCosts = field(default_factory=MatcherCosts)
    matcher_focal_alpha: float = 0.25
    matcher_focal_gamma: float = 2.0
    matcher_iou_order: float = 4.0
    dense_positives: int = 0  # encoder anchors trained per object, one-to-many (0: the official one-to-one only)
    dense_epochs: int = 0  # ... in the run's first epochs
    copyblend_area_threshold: int = 100
    copyblend_num_objects: int = 3
    copyblend_expand_ratios: tuple[float, float] = (0.1, 0.25)
    zoom_out_max: float = 4.0  # RandomZoomOut's largest canvas side, as torchvision's default
    mosaic_keeps_scale: bool = False  # a window of the mosaic is kept instead of the whole, shrunk (small objects)
    brightness: tuple[float, float] = (0.875, 1.125)  # RandomPhotometricDistort's factor range (torchvision's)
    photometric_p: float = 0.5  # RandomPhotometricDistort: each colour change's probability (torchvision's)
    channel_swap: bool = True  # ... and a random channel permutation, with the same probability


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


def _light(*, name, size, backbone, channels, hidden, queries, ff, lr, backbone_lr, mosaic_prob, min_box, published):
    """The three HGNetv2 + LiteEncoder variants share everything but these numbers."""
    return Variant(
        name=name,
        input_size=size,
        mean=None,
        std=None,
        backbone=BackboneSpec(name=backbone, taps=(2,)),
        encoder=EncoderSpec(kind="lite", in_channels=(channels,), in_strides=(16,), hidden_dim=hidden, expansion=0.34,
                            depth_mult=0.5),
        decoder=DecoderSpec(hidden_dim=hidden, feat_strides=(16, 32), num_layers=3, num_queries=queries,
                            num_points=(4, 2), dim_feedforward=ff, use_gateway=False, share_bbox_head=True),
        recipe=TrainRecipe(
            epochs=500, lr=lr, backbone_lr=backbone_lr, weight_decay=1e-4, total_batch_size=128,
            warmup_iters=4000, flat_epoch=250, no_aug_epoch=32, lr_gamma=0.5, aug_policy_epochs=(4, 250, 400),
            mosaic_prob=mosaic_prob, mosaic_output_size=size // 2, mixup_prob=0.0, mixup_epochs=(40000, 15000),
            copyblend_prob=0.0, copyblend_epochs=(40000, 15000), stop_epoch=468, base_size_repeat=None,
            min_box_size=min_box, matcher_change_epoch=450, use_fgl_ddf=False, use_uni_set=False,
            head_bias_weight_decay=name == "deimv2-atto",
        ),
        published=published,
    )


def _vit(*, name, backbone, taps, sta, hidden, expansion, depth_mult, enc_ff, layers, dec_ff, recipe, published):
    """The four ViT + STA + HybridEncoder ('deim' flavour) variants."""
    return Variant(
        name=name,
        input_size=640,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        backbone=BackboneSpec(name=backbone, taps=taps, sta_channels=sta, sta_hidden=hidden),
        encoder=EncoderSpec(kind="hybrid", in_channels=(hidden,) * 3, in_strides=(8, 16, 32), hidden_dim=hidden,
                            expansion=expansion, depth_mult=depth_mult, dim_feedforward=enc_ff, version="deim"),
        decoder=DecoderSpec(hidden_dim=hidden, feat_strides=(8, 16, 32), num_layers=layers, num_queries=300,
                            num_points=(3, 6, 3), dim_feedforward=dec_ff, use_gateway=True, share_bbox_head=False),
        recipe=recipe,
        published=published,
    )


def _vit_recipe(*, epochs, backbone_lr, weight_decay, flat, no_aug, policy, mixup_end, stop, repeat, change):
    """The recipe of the ViT variants (S-X): what differs is the schedule length and backbone LR."""
    return TrainRecipe(
        epochs=epochs, lr=5e-4, backbone_lr=backbone_lr, weight_decay=weight_decay, total_batch_size=32,
        warmup_iters=2000, flat_epoch=flat, no_aug_epoch=no_aug, lr_gamma=0.5, aug_policy_epochs=policy,
        mosaic_prob=0.5, mosaic_output_size=320, mixup_prob=0.5, mixup_epochs=(4, mixup_end), copyblend_prob=0.5,
        copyblend_epochs=(4, stop), stop_epoch=stop, base_size_repeat=repeat, min_box_size=1,
        matcher_change_epoch=change, use_fgl_ddf=True,
    )


_ALL = (
    _light(name="deimv2-atto", size=320, backbone="Atto", channels=256, hidden=64, queries=100, ff=160, lr=2e-3,
           backbone_lr=1e-3, mosaic_prob=0.3, min_box=12,
           published=Published(params_train=508_985, params_deploy=494_159, gflops=0.763, coco_ap=23.8,
                               t4_trt_fp16_ms=1.10)),
    _light(name="deimv2-femto", size=416, backbone="Femto", channels=512, hidden=96, queries=150, ff=256, lr=1.6e-3,
           backbone_lr=8e-4, mosaic_prob=0.5, min_box=10,
           published=Published(params_train=983_945, params_deploy=962_311, gflops=1.671, coco_ap=31.0,
                               t4_trt_fp16_ms=1.45)),
    _light(name="deimv2-pico", size=640, backbone="Pico", channels=512, hidden=112, queries=200, ff=320, lr=1.6e-3,
           backbone_lr=8e-4, mosaic_prob=0.5, min_box=8,
           published=Published(params_train=1_539_539, params_deploy=1_514_285, gflops=5.152, coco_ap=38.5,
                               t4_trt_fp16_ms=2.13)),
    Variant(
        name="deimv2-n",
        input_size=640,
        mean=None,
        std=None,
        backbone=BackboneSpec(name="B0", taps=(2, 3)),
        encoder=EncoderSpec(kind="hybrid", in_channels=(512, 1024), in_strides=(16, 32), hidden_dim=128,
                            expansion=0.34, depth_mult=0.5, dim_feedforward=512, version="dfine"),
        decoder=DecoderSpec(hidden_dim=128, feat_strides=(16, 32), num_layers=3, num_queries=300, num_points=(6, 6),
                            dim_feedforward=512, use_gateway=True, share_bbox_head=False),
        recipe=TrainRecipe(
            epochs=160, lr=8e-4, backbone_lr=4e-4, weight_decay=1e-4, total_batch_size=32, warmup_iters=2000,
            flat_epoch=7800, no_aug_epoch=12, lr_gamma=1.0, aug_policy_epochs=(4, 78, 148), mosaic_prob=0.5,
            mosaic_output_size=320, mixup_prob=0.5, mixup_epochs=(4, 78), copyblend_prob=0.4,
            copyblend_epochs=(4, 78), stop_epoch=148, base_size_repeat=None, min_box_size=1,
            matcher_change_epoch=136, use_fgl_ddf=True,
        ),
        published=Published(params_train=3_600_421, params_deploy=3_571_527, gflops=6.865, coco_ap=43.0,
                            t4_trt_fp16_ms=2.32),
    ),
    _vit(name="deimv2-s", backbone="vit_tiny", taps=(3, 7, 11), sta=16, hidden=192, expansion=0.34, depth_mult=0.67,
         enc_ff=512, layers=4, dec_ff=512,
         recipe=_vit_recipe(epochs=132, backbone_lr=2.5e-5, weight_decay=1e-4, flat=64, no_aug=12, policy=(4, 64, 120),
                            mixup_end=64, stop=120, repeat=20, change=100),
         published=Published(params_train=9_779_838, params_deploy=9_707_403, gflops=25.624, coco_ap=50.9,
                             t4_trt_fp16_ms=5.78)),
    _vit(name="deimv2-m", backbone="vit_tinyplus", taps=(3, 7, 11), sta=16, hidden=256, expansion=0.67,
         depth_mult=1.0, enc_ff=512, layers=4, dec_ff=512,
         recipe=_vit_recipe(epochs=102, backbone_lr=2.5e-5, weight_decay=1e-4, flat=49, no_aug=12, policy=(4, 49, 90),
                            mixup_end=49, stop=90, repeat=6, change=80),
         published=Published(params_train=18_357_750, params_deploy=18_106_355, gflops=52.202, coco_ap=53.0,
                             t4_trt_fp16_ms=8.80)),
    _vit(name="deimv2-l", backbone="dinov3_vits16", taps=(5, 8, 11), sta=32, hidden=224, expansion=1.0,
         depth_mult=1.0, enc_ff=896, layers=4, dec_ff=1792,
         recipe=_vit_recipe(epochs=68, backbone_lr=1.25e-5, weight_decay=1.25e-4, flat=34, no_aug=8,
                            policy=(4, 34, 60), mixup_end=34, stop=60, repeat=3, change=50),
         published=Published(params_train=32_551_214, params_deploy=32_178_043, gflops=96.737, coco_ap=56.0,
                             t4_trt_fp16_ms=10.47)),
    _vit(name="deimv2-x", backbone="dinov3_vits16plus", taps=(5, 8, 11), sta=64, hidden=256, expansion=1.25,
         depth_mult=1.37, enc_ff=1024, layers=6, dec_ff=2048,
         recipe=_vit_recipe(epochs=58, backbone_lr=1e-5, weight_decay=1.25e-4, flat=29, no_aug=8, policy=(4, 29, 50),
                            mixup_end=29, stop=50, repeat=3, change=45),
         published=Published(params_train=51_211_736, params_deploy=50_260_163, gflops=151.631, coco_ap=57.8,
                             t4_trt_fp16_ms=13.75)),
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
