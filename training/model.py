"""The CNN-GRU action recogniser. Pure torch: no files, no data, no devices.

Each frame goes into the CNN together with its difference from the previous
frame (motion has to reach the network: a colour-only CNN + GRU does not learn
direction of motion from scratch in a CPU budget). The previous frame is part
of the recurrent state, so a stream is processed one frame at a time with the
same result as a whole sequence at once.

Preprocessing (uint8 BGR -> normalised float) is the first thing `forward`
does, so the exported graph carries it and the service never re-implements it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from actionstream.contract import ModelConfig


class FrameEncoder(nn.Module):
    """(N, 6, H, W) frame + frame difference -> (N, embed).

    The last feature map is flattened rather than averaged, so where things
    are in the frame survives into the features.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 6
        for c_out in cfg.channels:
            layers += [
                nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            c_in = c_out
        self.conv = nn.Sequential(*layers)
        stride = 2 ** len(cfg.channels)
        grid = (cfg.height // stride) * (cfg.width // stride)
        self.proj = nn.Sequential(nn.Linear(c_in * grid, cfg.embed), nn.ReLU(inplace=True))

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)  # (N, 6, H, W) -> (N, C, H/16, W/16)
        return self.proj(x.flatten(1))  # (N, C*H/16*W/16) -> (N, embed)


class ActionRecognizer(nn.Module):
    """Per-frame action logits for a batch of frame sequences.

    State is a pair: `h` (B, 1, hidden), the GRU state, and `prev_frame`
    (B, 3, H, W), the last normalised frame. All-zero state starts a stream.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = FrameEncoder(cfg)
        self.gru = nn.GRU(cfg.embed, cfg.hidden, batch_first=True)
        self.head = nn.Linear(cfg.hidden, cfg.num_classes)

    def initial_state(self, batch: int) -> tuple[Tensor, Tensor]:
        p = next(self.parameters())
        h = p.new_zeros(batch, 1, self.cfg.hidden)
        prev = p.new_zeros(batch, 3, self.cfg.height, self.cfg.width)
        return h, prev

    def forward(
        self, frames: Tensor, h: Tensor, prev_frame: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """frames (B, T, H, W, 3) uint8 BGR -> logits (B, T, classes), h, prev_frame."""
        B, T = frames.shape[:2]
        x = (frames.float() - self.cfg.mean) / self.cfg.std
        x = x.permute(0, 1, 4, 2, 3)  # (B, T, H, W, 3) -> (B, T, 3, H, W)
        before = torch.cat([prev_frame.unsqueeze(1), x[:, :-1]], dim=1)  # (B, T, 3, H, W)
        x6 = torch.cat([x, x - before], dim=2)  # (B, T, 6, H, W)
        feats = self.encoder(x6.flatten(0, 1))  # (B*T, 6, H, W) -> (B*T, embed)
        feats = feats.view(B, T, -1)  # (B*T, embed) -> (B, T, embed)
        out, h_n = self.gru(feats, h.transpose(0, 1).contiguous())  # h: (B, 1, D) -> (1, B, D)
        logits = self.head(out)  # (B, T, hidden) -> (B, T, classes)
        return logits, h_n.transpose(0, 1), x[:, -1]


class StepModule(nn.Module):
    """One step of the recurrence, the shape the service runs (actionstream.contract).

    frames (N, H, W, 3) uint8, h (N, 1, hidden), prev_frame (N, 3, H, W)
    -> logits (N, classes), h_out, prev_frame_out.
    """

    def __init__(self, net: ActionRecognizer) -> None:
        super().__init__()
        self.net = net

    def forward(
        self, frames: Tensor, h: Tensor, prev_frame: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        logits, h_out, prev_out = self.net(frames.unsqueeze(1), h, prev_frame)  # T = 1
        return logits.squeeze(1), h_out, prev_out
