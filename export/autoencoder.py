"""The ReAE halves as exported: pixels in and out of the graph, streaming state as plain tensors.

encoder: uint8 frames [T, H_in, W_in, 3] + state -> latents [1, 48, T/4, h, w] (the DiT's layout) + state
decoder: latents [1, 48, n, h, w] + state -> uint8 frames [4n, H_out, W_out, 3] + state

State travels as positional tensors `state_in.<name>` / `state_out.<name>` (names from
`encoder_state_shapes` / `decoder_state_shapes`): `torch.onnx.export` would read a trailing dict
argument as keyword arguments, so the wrappers take and return flat tensors in a fixed order.

TensorRT accepts uint8 only at the network boundary (no transpose, resize or any other op on a
uint8 tensor), so the encoder casts the frames to float before anything else and the decoder casts
to uint8 as its very last op.
"""
import torch
from torch import nn

from swiftvr.pipeline import preprocess
from swiftvr.reae import ReAE, decoder_state_shapes, encoder_state_shapes
from contract.sizes import FrameGeometry


class EncoderGraph(nn.Module):
    def __init__(self, reae: ReAE, geometry: FrameGeometry, dtype: torch.dtype):
        super().__init__()
        self.reae, self.geometry, self.dtype = reae, geometry, dtype
        pad_w, pad_h = geometry.padded_size
        self.state_shapes = encoder_state_shapes(1, pad_h, pad_w)
        self.input_names = ["frames"] + [f"state_in.{n}" for n in self.state_shapes]
        self.output_names = ["latents"] + [f"state_out.{n}" for n in self.state_shapes]

    def forward(self, frames, *state):
        # The pipeline's preprocessing (bilinear resize with align_corners False, /255, zero-pad),
        # computed in float32 whatever the export precision: resizing 0..255 values in bf16 would
        # round them to 1-2 grey levels. The ReAE itself runs in the export precision.
        x = preprocess(frames.float(), self.geometry, torch.float32).to(self.dtype)
        latents, new_state = self.reae.encode(x, dict(zip(self.state_shapes, state)))
        return (latents.transpose(1, 2), *(new_state[n] for n in self.state_shapes))

    def example_inputs(self, frames: int) -> tuple[torch.Tensor, ...]:
        width, height = self.geometry.input_size
        generator = torch.Generator().manual_seed(0)
        pixels = torch.randint(0, 256, (frames, height, width, 3), generator=generator, dtype=torch.uint8)
        return (pixels, *(torch.zeros(s, dtype=self.dtype) for s in self.state_shapes.values()))


class DecoderGraph(nn.Module):
    def __init__(self, reae: ReAE, geometry: FrameGeometry, dtype: torch.dtype):
        super().__init__()
        self.reae, self.geometry, self.dtype = reae, geometry, dtype
        latent_w, latent_h = geometry.latent_size
        self.state_shapes = decoder_state_shapes(1, latent_h, latent_w)
        self.input_names = ["latents"] + [f"state_in.{n}" for n in self.state_shapes]
        self.output_names = ["frames"] + [f"state_out.{n}" for n in self.state_shapes]

    def forward(self, latents, *state):
        frames, new_state = self.reae.decode(latents.transpose(1, 2), dict(zip(self.state_shapes, state)))
        # swiftvr.pipeline.to_uint8(rounding=True) with its final permute moved before the rounding,
        # so that the uint8 cast is the graph's last op: crop the padding, *255 in float32, clamp,
        # round half to even, uint8.
        out_w, out_h = self.geometry.output_size
        x = (frames[0, :, :, :out_h, :out_w].float() * 255.0).clamp(0, 255)
        x = torch.round(x.permute(0, 2, 3, 1))
        return (x.to(torch.uint8), *(new_state[n] for n in self.state_shapes))

    def example_inputs(self, latents: int) -> tuple[torch.Tensor, ...]:
        latent_w, latent_h = self.geometry.latent_size
        generator = torch.Generator().manual_seed(0)
        z = torch.randn(1, 48, latents, latent_h, latent_w, generator=generator).to(self.dtype)
        return (z, *(torch.zeros(s, dtype=self.dtype) for s in self.state_shapes.values()))
