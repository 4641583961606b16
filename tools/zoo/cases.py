"""The zoo's cases: real models from the libraries people use, random weights, tiny configs.

Each case builds its model (seeded) and its inputs and says how it is run (``mode``):

- ``infer``: one forward call under ``torch.no_grad()`` with the library's default arguments;
- ``dynamic``: the same with ``dynamic=True`` (or ``torch._dynamo.mark_dynamic`` on the sequence
  dim) across several sequence lengths, one compiled function for all of them;
- ``train``: one training step: the loss, every parameter's gradient, and the loss after an
  optimizer step;
- ``generate``: greedy ``model.generate()`` with the default cache, token ids compared.

Models are called as their library documents: token ids alone for language models (no
hand-made attention masks or position ids), pixel values for vision models, raw audio for
speech encoders.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from zoo import libs

#: Worst relative error allowed, per dtype: max|nkipy - eager| / max|eager| over each output.
TOLERANCE: dict[torch.dtype, float] = {
    torch.float32: 1e-3,
    torch.float16: 1e-2,
    torch.bfloat16: 4e-2,
}

DYNAMIC_LENGTHS = (5, 9, 16, 23, 31)
VOCAB = 128


@dataclass(frozen=True)
class Case:
    name: str
    library: str  # transformers, torchvision, timm
    mode: str  # infer, dynamic, train, generate
    build: Callable[[], tuple[torch.nn.Module, Any]]  # (model, inputs or an input factory)
    dtype: torch.dtype = torch.float32
    dynamic: str = ""  # "dynamic=True" or "mark_dynamic" for mode dynamic
    fast: bool = False  # in tests/test_zoo.py's subset
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _seed() -> None:
    torch.manual_seed(0)


def _ids(length: int = 9, batch: int = 2, vocab: int = VOCAB) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(1))


def _tiny_decoder_config(kind: str) -> Any:
    tf = libs.transformers()
    common: dict[str, Any] = {"vocab_size": VOCAB}
    if kind == "llama":
        return tf.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, max_position_embeddings=64, **common)
    if kind == "mistral":
        return tf.MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, max_position_embeddings=64, sliding_window=16, **common)
    if kind == "qwen2":
        return tf.Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, max_position_embeddings=64, **common)
    if kind == "gpt2":
        return tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, **common)
    if kind == "phi":
        return tf.PhiConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            max_position_embeddings=64, **common)
    if kind == "gemma":
        return tf.GemmaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=1, head_dim=8, max_position_embeddings=64, **common)
    if kind == "gpt_neox":
        return tf.GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                max_position_embeddings=64, **common)
    if kind == "opt":
        return tf.OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                            max_position_embeddings=64, word_embed_proj_dim=32, **common)
    if kind == "falcon":
        return tf.FalconConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, **common)
    if kind == "bloom":
        return tf.BloomConfig(hidden_size=32, n_layer=2, n_head=4, **common)
    if kind == "gpt_bigcode":
        return tf.GPTBigCodeConfig(n_embd=32, n_layer=2, n_head=4, n_positions=64, **common)
    if kind == "mixtral":
        return tf.MixtralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                                max_position_embeddings=64, **common)
    if kind == "phi3":
        return tf.Phi3Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, **common)
    raise ValueError(f"no tiny decoder config named {kind!r}")


def _decoder(
    kind: str, dtype: torch.dtype = torch.float32, **overrides: Any
) -> Callable[[], tuple[torch.nn.Module, Any]]:
    def build() -> tuple[torch.nn.Module, Any]:
        _seed()
        config = _tiny_decoder_config(kind)
        for key, value in overrides.items():
            setattr(config, key, value)
        model = libs.transformers().AutoModelForCausalLM.from_config(config)
        return model.to(dtype).eval(), (_ids(),)

    return build


def _encoder(kind: str) -> Callable[[], tuple[torch.nn.Module, Any]]:
    def build() -> tuple[torch.nn.Module, Any]:
        tf = libs.transformers()
        _seed()
        small: dict[str, Any] = {"vocab_size": VOCAB, "max_position_embeddings": 64}
        if kind == "bert":
            cfg = tf.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                **small)
        elif kind == "roberta":
            cfg = tf.RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                   **small)
        elif kind == "distilbert":
            cfg = tf.DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64, **small)
        elif kind == "albert":
            cfg = tf.AlbertConfig(embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, **small)
        elif kind == "electra":
            cfg = tf.ElectraConfig(embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=64, **small)
        elif kind == "deberta_v2":  # a DeBERTa-v3-style config: relative attention, shared keys, buckets
            cfg = tf.DebertaV2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                     relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=16,
                                     max_relative_positions=-1, norm_rel_ebd="layer_norm", share_att_key=True,
                                     position_biased_input=False, type_vocab_size=0, **small)
        elif kind == "mobilebert":
            cfg = tf.MobileBertConfig(hidden_size=32, embedding_size=16, intra_bottleneck_size=16,
                                      true_hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=64, num_feedforward_networks=2, **small)
        else:
            raise ValueError(f"no tiny encoder config named {kind!r}")
        return tf.AutoModel.from_config(cfg).eval(), (_ids(),)

    return build


def _t5() -> tuple[torch.nn.Module, Any]:
    tf = libs.transformers()
    _seed()
    cfg = tf.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                      decoder_start_token_id=0)
    ids = _ids()
    return tf.T5ForConditionalGeneration(cfg).eval(), {"input_ids": ids, "decoder_input_ids": ids[:, :5]}


def _bart() -> tuple[torch.nn.Module, Any]:
    tf = libs.transformers()
    _seed()
    cfg = tf.BartConfig(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64)
    return tf.BartModel(cfg).eval(), (_ids(),)


def _hf_vit() -> tuple[torch.nn.Module, Any]:
    tf = libs.transformers()
    _seed()
    cfg = tf.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=64)
    return tf.ViTModel(cfg).eval(), (torch.randn(2, 3, 32, 32),)


def _wav2vec2() -> tuple[torch.nn.Module, Any]:
    tf = libs.transformers()
    _seed()
    cfg = tf.Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                            conv_dim=(16, 16, 16), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3),
                            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    return tf.Wav2Vec2Model(cfg).eval(), (torch.randn(2, 1600),)


def _whisper_encoder() -> tuple[torch.nn.Module, Any]:
    tf = libs.transformers()
    _seed()
    cfg = tf.WhisperConfig(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                           decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=16,
                           max_source_positions=30, max_target_positions=32, pad_token_id=1, bos_token_id=2,
                           eos_token_id=3, decoder_start_token_id=2)
    model = tf.WhisperModel(cfg).get_encoder().eval()
    return model, (torch.randn(2, 16, 60),)  # (batch, mel bins, 2 x max_source_positions frames)


def _t5_generate() -> tuple[torch.nn.Module, Any]:
    model, inputs = _t5()
    return model, (inputs["input_ids"],)


def _hf_swin() -> tuple[torch.nn.Module, Any]:
    tf = libs.transformers()
    _seed()
    cfg = tf.SwinConfig(image_size=32, patch_size=2, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4)
    return tf.SwinModel(cfg).eval(), (torch.randn(2, 3, 32, 32),)


def _clip() -> tuple[torch.nn.Module, Any]:
    tf = libs.transformers()
    _seed()
    cfg = tf.CLIPConfig(
        text_config={"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "max_position_embeddings": 16},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 2, "num_attention_heads": 4},
        projection_dim=16,
    )
    return tf.CLIPModel(cfg).eval(), {"input_ids": _ids(), "pixel_values": torch.randn(2, 3, 32, 32)}


def _segformer() -> tuple[torch.nn.Module, Any]:
    tf = libs.transformers()
    _seed()
    cfg = tf.SegformerConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, 32], num_attention_heads=[1, 1, 2, 2],
                             decoder_hidden_size=32, num_labels=4)
    return tf.SegformerForSemanticSegmentation(cfg).eval(), (torch.randn(2, 3, 64, 64),)


def _tv(name: str, size: int = 64, **kwargs: Any) -> Callable[[], tuple[torch.nn.Module, Any]]:
    def build() -> tuple[torch.nn.Module, Any]:
        tv = libs.torchvision()
        _seed()
        model = tv.models.get_model(name, weights=None, num_classes=10, **kwargs)
        return model.eval(), (torch.randn(2, 3, size, size),)

    return build


def _tv_vit() -> tuple[torch.nn.Module, Any]:
    tv = libs.torchvision()
    _seed()
    model = tv.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32,
                                        mlp_dim=64, num_classes=10)
    return model.eval(), (torch.randn(2, 3, 32, 32),)


def _tv_densenet() -> tuple[torch.nn.Module, Any]:
    tv = libs.torchvision()
    _seed()
    model = tv.models.DenseNet(growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16, num_classes=10)
    return model.eval(), (torch.randn(2, 3, 32, 32),)


def _timm(name: str, size: int = 64, **kwargs: Any) -> Callable[[], tuple[torch.nn.Module, Any]]:
    def build() -> tuple[torch.nn.Module, Any]:
        tm = libs.timm()
        _seed()
        model = tm.create_model(name, pretrained=False, num_classes=10, **kwargs)
        return model.eval(), (torch.randn(2, 3, size, size),)

    return build


def _timm_mixer() -> tuple[torch.nn.Module, Any]:
    tm = libs.timm()
    _seed()
    model = tm.models.mlp_mixer.MlpMixer(num_classes=10, img_size=32, patch_size=8, num_blocks=2, embed_dim=32)
    return model.eval(), (torch.randn(2, 3, 32, 32),)


#: Dropout off for training cases: eager and compiled draw different random masks.
NO_DROPOUT: dict[str, dict[str, float]] = {
    "llama": {"attention_dropout": 0.0},  # its default already
    "gpt2": {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0},
}


def _decoder_train(kind: str) -> Callable[[], tuple[torch.nn.Module, Any]]:
    def build() -> tuple[torch.nn.Module, Any]:
        model, (ids,) = _decoder(kind, **NO_DROPOUT[kind])()
        return model.train(), {"input_ids": ids, "labels": ids}  # the library's own LM loss

    return build


def _cnn_train() -> tuple[torch.nn.Module, Any]:
    model, _ = _tv("resnet18")()
    # Batch 8 at 64x64: the last BatchNorms normalise over 8 x 2 x 2 values. With batch 2 at 32x32
    # (1x1 maps, two values per channel) float32 eager itself was 1% off float64 in gradients.
    x = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    target = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(2))
    return model.train(), (x, target)  # BatchNorm in train mode


CASES: list[Case] = [
    # decoder LMs, static shapes
    Case("llama", "transformers", "infer", _decoder("llama"), fast=True),
    Case("mistral", "transformers", "infer", _decoder("mistral")),
    Case("qwen2", "transformers", "infer", _decoder("qwen2")),
    Case("gpt2", "transformers", "infer", _decoder("gpt2")),
    Case("phi", "transformers", "infer", _decoder("phi")),
    Case("gemma", "transformers", "infer", _decoder("gemma")),
    Case("gpt_neox", "transformers", "infer", _decoder("gpt_neox")),
    Case("opt", "transformers", "infer", _decoder("opt")),
    # encoders, encoder-decoders, vision and speech transformers
    Case("bert", "transformers", "infer", _encoder("bert"), fast=True),
    Case("roberta", "transformers", "infer", _encoder("roberta"), fast=True),
    Case("distilbert", "transformers", "infer", _encoder("distilbert")),
    Case("albert", "transformers", "infer", _encoder("albert")),
    Case("electra", "transformers", "infer", _encoder("electra")),
    Case("t5", "transformers", "infer", _t5),
    Case("bart", "transformers", "infer", _bart),
    Case("hf_vit", "transformers", "infer", _hf_vit),
    Case("wav2vec2", "transformers", "infer", _wav2vec2),
    Case("whisper_encoder", "transformers", "infer", _whisper_encoder),
    # torchvision classification nets (the library's own classes, random weights)
    Case("tv_resnet18", "torchvision", "infer", _tv("resnet18"), fast=True),
    Case("tv_mobilenet_v3_small", "torchvision", "infer", _tv("mobilenet_v3_small")),
    Case("tv_efficientnet_b0", "torchvision", "infer", _tv("efficientnet_b0")),
    Case("tv_convnext_tiny", "torchvision", "infer", _tv("convnext_tiny", size=32)),
    Case("tv_regnet_y_400mf", "torchvision", "infer", _tv("regnet_y_400mf")),
    Case("tv_vit", "torchvision", "infer", _tv_vit, note="VisionTransformer(image 32, patch 8, 2 layers, dim 32)"),
    # timm
    Case("timm_resnet18", "timm", "infer", _timm("resnet18")),
    Case("timm_mobilenetv3_small_050", "timm", "infer", _timm("mobilenetv3_small_050")),
    Case("timm_efficientnet_b0", "timm", "infer", _timm("efficientnet_b0")),
    Case("timm_convnext_atto", "timm", "infer", _timm("convnext_atto", size=32)),
    Case("timm_regnetx_002", "timm", "infer", _timm("regnetx_002")),
    Case("timm_vit_tiny", "timm", "infer", _timm("vit_tiny_patch16_224", size=32, img_size=32, depth=2)),
    Case("timm_levit_128s", "timm", "infer", _timm("levit_128s", img_size=64),
         note="attention biases gathered by index, hard-swish, BatchNorm1d on tokens"),
    Case("timm_mixer", "timm", "infer", _timm_mixer,
         note="MLP-Mixer: token-mixing MLPs over the transposed sequence"),
    Case("timm_ghostnet_050", "timm", "infer", _timm("ghostnet_050")),
    Case("timm_poolformerv2_s12", "timm", "infer", _timm("poolformerv2_s12", size=32),
         note="average pooling without padding in the count, GroupNorm"),
    # more transformers architectures (tried after the list above was tuned)
    Case("falcon", "transformers", "infer", _decoder("falcon")),
    Case("bloom", "transformers", "infer", _decoder("bloom"), note="ALiBi biases"),
    Case("gpt_bigcode", "transformers", "infer", _decoder("gpt_bigcode"), note="multi-query attention"),
    Case("mixtral", "transformers", "infer", _decoder("mixtral"), note="mixture of experts: top-2 of 4 routing"),
    Case("phi3", "transformers", "infer", _decoder("phi3")),
    Case("deberta_v2", "transformers", "infer", _encoder("deberta_v2"),
         note="relative attention (p2c, c2p) with log buckets"),
    Case("mobilebert", "transformers", "infer", _encoder("mobilebert")),
    Case("hf_swin", "transformers", "infer", _hf_swin, note="shifted windows: roll, window masks, bias table"),
    Case("clip", "transformers", "infer", _clip, note="text and vision towers, logits per image"),
    Case("segformer", "transformers", "infer", _segformer, note="bilinear upsampling in the decode head"),
    # more torchvision nets
    Case("tv_densenet", "torchvision", "infer", _tv_densenet,
         note="DenseNet(growth 8, blocks 2-2-2-2): concatenated features"),
    Case("tv_squeezenet1_1", "torchvision", "infer", _tv("squeezenet1_1"), note="max pooling with ceil_mode"),
    Case("tv_shufflenet_v2_x0_5", "torchvision", "infer", _tv("shufflenet_v2_x0_5"), note="channel shuffle"),
    # dynamic sequence length
    Case("llama_dynamic", "transformers", "dynamic", _decoder("llama"), dynamic="dynamic=True"),
    Case("gpt2_mark_dynamic", "transformers", "dynamic", _decoder("gpt2"), dynamic="mark_dynamic"),
    Case("bert_dynamic", "transformers", "dynamic", _encoder("bert"), dynamic="dynamic=True"),
    Case("roberta_mark_dynamic", "transformers", "dynamic", _encoder("roberta"), dynamic="mark_dynamic"),
    Case("bloom_dynamic", "transformers", "dynamic", _decoder("bloom"), dynamic="dynamic=True"),
    Case("deberta_v2_mark_dynamic", "transformers", "dynamic", _encoder("deberta_v2"), dynamic="mark_dynamic"),
    # training
    Case("llama_train", "transformers", "train", _decoder_train("llama"), note="SDPA attention (the default)"),
    Case("gpt2_train", "transformers", "train", _decoder_train("gpt2"), note="dropout 0 (random masks differ)"),
    Case("tv_resnet18_train", "torchvision", "train", _cnn_train, note="BatchNorm in train mode"),
    # generation
    Case("llama_generate", "transformers", "generate", _decoder("llama"), extra={"max_new_tokens": 8}),
    Case("gpt2_generate", "transformers", "generate", _decoder("gpt2"), extra={"max_new_tokens": 8}),
    Case("t5_generate", "transformers", "generate", _t5_generate, extra={"max_new_tokens": 8},
         note="encoder-decoder, the default cache"),
    # reduced precision
    Case("llama_bf16", "transformers", "infer", _decoder("llama", torch.bfloat16), dtype=torch.bfloat16),
    Case("llama_fp16", "transformers", "infer", _decoder("llama", torch.float16), dtype=torch.float16),
]

BY_NAME: dict[str, Case] = {c.name: c for c in CASES}
assert len(BY_NAME) == len(CASES), "duplicate case names"
