"""ReAE: SwiftVR's restoration-aware video autoencoder (TAEHV-style), for chunked streaming.

Written from docs/SPEC section "a. ReAE". The layout of `encoder` / `decoder` (layer indices,
parameter names, shapes) is the release checkpoint's, so `load_state_dict(strict=True)` works.

Shapes: frames are [N, T, 3, H, W] RGB in [0, 1]; latents are [N, T/4, 48, H/16, W/16].
Every layer runs on all N*T frames of a chunk as one batch of images. Only two kinds of layer
look across frames:
  * MemBlock: frame t also sees this block's input at frame t-1. Across chunks that "previous
    frame" is carried as state (the last input frame of the previous chunk, [N, 1, C, h, w]).
  * TPool: stacks `stride` consecutive frames along channels. Chunks are always a multiple of 4
    frames, so groups never straddle a chunk boundary and TPool needs no state.
So a stream's state is one tensor per MemBlock, named `mem_<layer index>`, and processing a clip
in chunks gives the same numbers as processing it whole.
"""
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LATENT_CHANNELS = 48
PATCH_SIZE = 2            # pixel_unshuffle factor applied to RGB before the encoder
FRAMES_PER_LATENT = 4     # the encoder's two stride-2 TPools
PIXELS_PER_LATENT = 16    # patch 2 x three stride-2 convs
ENCODER_WIDTH = 64
DECODER_WIDTHS = (512, 256, 128, 64)   # n_f = [256*wm, 128*wm, 64*wm, 64] with width_mult 2

# MemBlock layer index -> (channels, spatial downscale in pixels of the original frame).
ENCODER_MEMBLOCKS = {4: (64, 4), 5: (64, 4), 6: (64, 4),
                     9: (64, 8), 10: (64, 8), 11: (64, 8),
                     14: (64, 16), 15: (64, 16), 16: (64, 16)}
# MemBlock layer index -> (channels, spatial upscale relative to the latent grid).
DECODER_MEMBLOCKS = {3: (512, 1), 4: (512, 1), 5: (512, 1),
                     9: (256, 2), 10: (256, 2), 11: (256, 2),
                     15: (128, 4), 16: (128, 4), 17: (128, 4)}


def conv3x3(n_in: int, n_out: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, stride=stride, padding=1, bias=bias)


class Clamp(nn.Module):
    """Soft clamp of the latents to (-3, 3) at the decoder input."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x / 3) * 3


class MemBlock(nn.Module):
    """Residual block whose first conv also sees the previous frame's input (`past`)."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.conv = nn.Sequential(conv3x3(2 * n_in, n_out), nn.ReLU(),
                                  conv3x3(n_out, n_out), nn.ReLU(),
                                  conv3x3(n_out, n_out))
        # The release only has n_in == n_out, so there are no `skip` weights in the checkpoint.
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: Tensor, past: Tensor) -> Tensor:
        # The current frame comes first in the channel concat (the weights depend on the order).
        return self.act(self.conv(torch.cat([x, past], dim=1)) + self.skip(x))


class TPool(nn.Module):
    """Merges each group of `stride` consecutive frames into one with a 1x1 conv."""

    def __init__(self, n_f: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(n_f * stride, n_f, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        # x is [N*T, C, H, W] with time fastest inside each clip; because T is a multiple of the
        # stride, a plain reshape puts frame k of each group at channels [k*C, (k+1)*C).
        _, c, h, w = x.shape
        return self.conv(x.reshape(-1, self.stride * c, h, w))


class TGrow(nn.Module):
    """Turns every frame into `stride` frames (1 or 2) with per-frame channel mixes."""

    def __init__(self, n_f: int, stride: int):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"TGrow stride must be 1 or 2, got {stride}")
        self.stride = stride
        if stride == 1:
            self.proj = nn.Conv2d(n_f, n_f, 1, bias=False)
        else:
            # The checkpoint stores a (3,1,1) Conv3d that the original code applies to each frame
            # duplicated into a 2-frame sequence, zero-padded by one frame on both sides. That is
            # exactly out_0 = (W1 + W2) x and out_1 = (W0 + W1) x, so we run it as one 1x1 conv
            # producing both frames: a third of the work and no Conv3d in the exported graph.
            self.conv3d = nn.Conv3d(n_f, n_f, (3, 1, 1), padding=(1, 0, 0), bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            return self.proj(x)
        k = self.conv3d.weight[:, :, :, 0, 0]                                    # [C, C, 3]
        both = torch.cat([k[:, :, 1] + k[:, :, 2], k[:, :, 0] + k[:, :, 1]])    # [2C, C]
        y = F.conv2d(x, both[:, :, None, None])                                  # [N*T, 2C, H, W]
        # Frame t -> frames 2t, 2t+1: splitting the channels into (2, C) keeps time order.
        _, c, h, w = x.shape
        return y.reshape(-1, c, h, w)


def build_encoder() -> nn.Sequential:
    c = ENCODER_WIDTH
    return nn.Sequential(
        conv3x3(3 * PATCH_SIZE**2, c), nn.ReLU(),                       # 0, 1
        TPool(c, 2), conv3x3(c, c, stride=2, bias=False),               # 2, 3
        MemBlock(c, c), MemBlock(c, c), MemBlock(c, c),                 # 4-6
        TPool(c, 2), conv3x3(c, c, stride=2, bias=False),               # 7, 8
        MemBlock(c, c), MemBlock(c, c), MemBlock(c, c),                 # 9-11
        TPool(c, 1), conv3x3(c, c, stride=2, bias=False),               # 12, 13
        MemBlock(c, c), MemBlock(c, c), MemBlock(c, c),                 # 14-16
        conv3x3(c, LATENT_CHANNELS),                                    # 17
    )


def build_decoder() -> nn.Sequential:
    c0, c1, c2, c3 = DECODER_WIDTHS
    return nn.Sequential(
        Clamp(), conv3x3(LATENT_CHANNELS, c0), nn.ReLU(),               # 0-2
        MemBlock(c0, c0), MemBlock(c0, c0), MemBlock(c0, c0),           # 3-5
        nn.Upsample(scale_factor=2), TGrow(c0, 1),                      # 6, 7
        conv3x3(c0, c1, bias=False),                                    # 8
        MemBlock(c1, c1), MemBlock(c1, c1), MemBlock(c1, c1),           # 9-11
        nn.Upsample(scale_factor=2), TGrow(c1, 2),                      # 12, 13
        conv3x3(c1, c2, bias=False),                                    # 14
        MemBlock(c2, c2), MemBlock(c2, c2), MemBlock(c2, c2),           # 15-17
        nn.Upsample(scale_factor=2), TGrow(c2, 2),                      # 18, 19
        conv3x3(c2, c3, bias=False), nn.ReLU(),                         # 20, 21
        conv3x3(c3, 3 * PATCH_SIZE**2),                                 # 22
    )


def encoder_state_shapes(n: int, height: int, width: int) -> dict[str, tuple[int, ...]]:
    """Encoder state for a stream of n clips of height x width pixels, in layer order."""
    _check_frame_size(height, width)
    return {f"mem_{i}": (n, 1, c, height // down, width // down)
            for i, (c, down) in ENCODER_MEMBLOCKS.items()}


def decoder_state_shapes(n: int, latent_height: int, latent_width: int) -> dict[str, tuple[int, ...]]:
    """Decoder state for a stream of n clips with a latent_height x latent_width grid, in layer order."""
    return {f"mem_{i}": (n, 1, c, latent_height * up, latent_width * up)
            for i, (c, up) in DECODER_MEMBLOCKS.items()}


def zero_state(shapes: dict[str, tuple[int, ...]], dtype: torch.dtype,
               device: torch.device | str | None = None) -> dict[str, Tensor]:
    """The state at the start of a stream: every MemBlock's previous frame is zeros."""
    return {name: torch.zeros(shape, dtype=dtype, device=device) for name, shape in shapes.items()}


def patchify(frames: Tensor) -> Tensor:
    """[N, T, 3, H, W] -> [N, T, 12, H/2, W/2]; channel c*4 + dy*2 + dx holds pixel (2y+dy, 2x+dx)."""
    n, _, c, h, w = frames.shape
    x = F.pixel_unshuffle(frames.reshape(-1, c, h, w), PATCH_SIZE)
    return x.reshape(n, -1, *x.shape[1:])


def unpatchify(x: Tensor) -> Tensor:
    """Inverse of `patchify`: [N, T, 12, h, w] -> [N, T, 3, 2h, 2w]."""
    n, _, c, h, w = x.shape
    frames = F.pixel_shuffle(x.reshape(-1, c, h, w), PATCH_SIZE)
    return frames.reshape(n, -1, *frames.shape[1:])


def _check_frame_size(height: int, width: int) -> None:
    # One latent per 16x16 pixels. (The DiT's 2x2 patches need 32; its token_grid checks that.)
    if height % PIXELS_PER_LATENT or width % PIXELS_PER_LATENT:
        raise ValueError(f"ReAE needs frame height and width that are multiples of {PIXELS_PER_LATENT}, "
                         f"got {height}x{width} (pad the frames first)")


def _run_layers(layers: nn.Sequential, x: Tensor, n: int,
                state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """Runs a chunk through `layers`. x is [n*T, C, H, W] (clip-major, time-minor)."""
    new_state = {}
    for index, layer in enumerate(layers):
        if isinstance(layer, MemBlock):
            name = f"mem_{index}"
            frames = x.reshape(n, -1, *x.shape[1:])                          # [n, T, C, H, W]
            # Frame t's past is frame t-1; the chunk's first frame gets the carried last frame.
            # (Slicing after the cat, not frames[:, :-1], keeps a dynamic T from being
            # specialised by torch.export when the example chunk has 2 frames.)
            past = torch.cat([state[name], frames], dim=1)[:, :-1].reshape(x.shape)
            # clone: a view would keep the whole chunk's activation alive until the next chunk.
            new_state[name] = frames[:, -1:].clone()
            x = layer(x, past)
        else:
            x = layer(x)
    return x, new_state


def _state_or_zeros(state: dict[str, Tensor] | None, shapes: dict[str, tuple[int, ...]],
                    like: Tensor, what: str) -> dict[str, Tensor]:
    if state is None:
        return zero_state(shapes, like.dtype, like.device)
    if set(state) != set(shapes):
        raise ValueError(f"{what} state must have exactly the entries {list(shapes)}, got {list(state)}")
    return state


class ReAE(nn.Module):
    """The SwiftVR autoencoder with explicit streaming state (see the module docstring)."""

    # Decoding k latents gives 4k frames; the first 3 of a stream come before input frame 0.
    frames_to_trim = FRAMES_PER_LATENT - 1

    def __init__(self):
        super().__init__()
        self.encoder = build_encoder()
        self.decoder = build_decoder()

    def encode(self, frames: Tensor, state: dict[str, Tensor] | None = None
               ) -> tuple[Tensor, dict[str, Tensor]]:
        """[N, T, 3, H, W] in [0, 1] -> latents [N, T/4, 48, H/16, W/16] and the new state.

        `state` None means start of stream. T must be a multiple of 4 (a LAST chunk of 4b+1
        frames is padded by the caller with 3 copies of its last frame).
        """
        if frames.ndim != 5 or frames.shape[2] != 3:
            raise ValueError(f"encode expects frames [N, T, 3, H, W], got {tuple(frames.shape)}")
        n, t, _, height, width = frames.shape
        if t % FRAMES_PER_LATENT:
            raise ValueError(f"encode needs a multiple of {FRAMES_PER_LATENT} frames per chunk, got {t}")
        _check_frame_size(height, width)
        state = _state_or_zeros(state, encoder_state_shapes(n, height, width), frames, "encoder")
        x = patchify(frames)
        x, new_state = _run_layers(self.encoder, x.reshape(-1, *x.shape[2:]), n, state)
        return x.reshape(n, -1, *x.shape[1:]), new_state

    def decode_raw(self, latents: Tensor, state: dict[str, Tensor] | None = None
                   ) -> tuple[Tensor, dict[str, Tensor]]:
        """Latents [N, n, 48, h, w] -> the decoder's 12-channel output [N, 4n, 12, 8h, 8w] and the new state."""
        if latents.ndim != 5 or latents.shape[2] != LATENT_CHANNELS:
            raise ValueError(f"decode expects latents [N, n, {LATENT_CHANNELS}, h, w], "
                             f"got {tuple(latents.shape)}")
        n, _, _, h, w = latents.shape
        state = _state_or_zeros(state, decoder_state_shapes(n, h, w), latents, "decoder")
        x, new_state = _run_layers(self.decoder, latents.reshape(-1, *latents.shape[2:]), n, state)
        return x.reshape(n, -1, *x.shape[1:]), new_state

    def decode(self, latents: Tensor, state: dict[str, Tensor] | None = None
               ) -> tuple[Tensor, dict[str, Tensor]]:
        """Latents [N, n, 48, h, w] -> frames [N, 4n, 3, 16h, 16w] in [0, 1] and the new state.

        The first `frames_to_trim` frames of a stream's first chunk are NOT dropped here.
        """
        raw, new_state = self.decode_raw(latents, state)
        return unpatchify(raw.clamp(0, 1)), new_state


def seeded_reae_state_dict(seed: int = 0) -> dict[str, Tensor]:
    """The fixtures' random ReAE weights (bit-exact for seed 0; recipe in fixtures/README.md).

    Per parameter in state-dict order: randn from one generator seeded once; weights scaled by
    1/sqrt(fan_in), biases by 0.02; then +0.5 on the last conv's bias so decoded RGB sits mid-range.
    """
    with torch.device("meta"):
        shapes = {name: p.shape for name, p in ReAE().state_dict().items()}
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for name, shape in shapes.items():
        r = torch.randn(shape, generator=generator, dtype=torch.float32)
        if len(shape) > 1:
            weights[name] = r * (1.0 / math.sqrt(math.prod(shape[1:])))
        else:
            weights[name] = r * 0.02
    weights["decoder.22.bias"] = weights["decoder.22.bias"] + 0.5
    return weights
