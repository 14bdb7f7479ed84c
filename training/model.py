"""The action recognisers: a CNN per frame, a recurrent cell across frames. Pure torch:
no files, no data, no devices.

Each frame goes into the CNN together with its difference from the previous
frame (motion has to reach the network: a colour-only CNN + GRU does not learn
direction of motion from scratch in a CPU budget). The previous frame is part
of the recurrent state, so a stream is processed one frame at a time with the
same result as a whole sequence at once.

Every recogniser takes (frames, *state) and returns (logits, *next_state);
`state_names` names the state tensors in that order (they become the ONNX
step model's state inputs), and `initial_state` gives the zeros that start a
stream. States are batch-first, like the step model the service runs.

Preprocessing (uint8 BGR -> normalised float) is the first thing `forward`
does, so the exported graph carries it and the service never re-implements it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from actionstream.contract import ModelConfig


class FrameEncoder(nn.Module):
    """(N, C_in, H, W) -> (N, embed): C_in is 6 for frame + difference, 3 for a frame alone.

    The last feature map is flattened rather than averaged, so where things
    are in the frame survives into the features.
    """

    def __init__(self, cfg: ModelConfig, in_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for c_out in cfg.channels:
            layers += [
                nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            c_in = c_out
        self.conv = nn.Sequential(*layers)
        # Each block (3x3, stride 2, padding 1) takes a side of n to ceil(n / 2), so the
        # blocks together to ceil(n / 2 ** blocks): any input size runs.
        stride = 2 ** len(cfg.channels)
        grid = -(-cfg.height // stride) * -(-cfg.width // stride)
        self.proj = nn.Sequential(nn.Linear(c_in * grid, cfg.embed), nn.ReLU(inplace=True))

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)  # (N, C_in, H, W) -> (N, C, ceil(H/s), ceil(W/s))
        return self.proj(x.flatten(1))  # (N, C*ceil(H/s)*ceil(W/s)) -> (N, embed)


def _normalise(frames: Tensor, cfg: ModelConfig) -> Tensor:
    x = (frames.float() - cfg.mean) / cfg.std
    return x.permute(0, 1, 4, 2, 3)  # (B, T, H, W, 3) -> (B, T, 3, H, W)


class Recurrence(nn.Module):
    """A GRU, LSTM or plain tanh RNN over (B, T, embed), its state batch-first.

    Each state tensor is (B, layers, hidden): `h`, and for an LSTM also `c`.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        between = cfg.dropout if cfg.layers > 1 else 0.0  # torch drops only between layers
        args = (cfg.embed, cfg.hidden, cfg.layers)
        self.rnn: nn.RNNBase
        match cfg.cell:
            case "gru":
                self.rnn = nn.GRU(*args, batch_first=True, dropout=between)
            case "lstm":
                self.rnn = nn.LSTM(*args, batch_first=True, dropout=between)
            case "rnn":
                self.rnn = nn.RNN(*args, batch_first=True, dropout=between, nonlinearity="tanh")
            case other:
                raise ValueError(f"no recurrent cell {other!r}")
        self.state_names: tuple[str, ...] = ("h", "c") if cfg.cell == "lstm" else ("h",)

    def forward(self, x: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        layer_first = tuple(s.transpose(0, 1).contiguous() for s in state)  # (B, L, D) -> (L, B, D)
        if isinstance(self.rnn, nn.LSTM):
            out, (h, c) = self.rnn(x, layer_first)
            after: tuple[Tensor, ...] = (h, c)
        else:
            out, h = self.rnn(x, layer_first[0])
            after = (h,)
        return out, tuple(s.transpose(0, 1) for s in after)  # (L, B, D) -> (B, L, D)


class FrameAndMotion(nn.Module):
    """The CNN's input: each frame and its difference from the one before, (B, T, 6, H, W)."""

    channels = 6

    def forward(self, x: Tensor, before: Tensor) -> Tensor:
        return torch.cat([x, x - before], dim=2)  # 2 x (B, T, 3, H, W) -> (B, T, 6, H, W)


class MotionOnly(nn.Module):
    """The CNN's input: the difference alone, (B, T, 3, H, W). What stands still is
    invisible, so the network cannot learn a clip's background instead of its action."""

    channels = 3

    def forward(self, x: Tensor, before: Tensor) -> Tensor:
        return x - before


class ActionRecognizer(nn.Module):
    """Per-frame action logits for a batch of frame sequences, state carried across calls.

    State: the cell's (`h`, and `c` for an LSTM), each (B, layers, hidden),
    then `prev_frame` (B, 3, H, W), the last normalised frame. All zeros
    start a stream.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.inputs = FrameAndMotion() if cfg.appearance else MotionOnly()
        self.encoder = FrameEncoder(cfg, in_channels=self.inputs.channels)
        self.cell = Recurrence(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.hidden, cfg.num_classes)
        self.state_names = (*self.cell.state_names, "prev_frame")

    def initial_state(self, batch: int) -> tuple[Tensor, ...]:
        p = next(self.parameters())
        cell = [p.new_zeros(batch, self.cfg.layers, self.cfg.hidden) for _ in self.cell.state_names]
        return (*cell, p.new_zeros(batch, 3, self.cfg.height, self.cfg.width))

    def forward(self, frames: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        """frames (B, T, H, W, 3) uint8 BGR, *state -> logits (B, T, classes), *next state."""
        *cell_state, prev_frame = state
        B, T = frames.shape[:2]
        x = _normalise(frames, self.cfg)  # (B, T, 3, H, W)
        before = torch.cat([prev_frame.unsqueeze(1), x[:, :-1]], dim=1)  # (B, T, 3, H, W)
        seen = self.inputs(x, before)  # (B, T, C_in, H, W)
        feats = self.encoder(seen.flatten(0, 1))  # (B*T, C_in, H, W) -> (B*T, embed)
        feats = self.drop(feats.view(B, T, -1))  # (B*T, embed) -> (B, T, embed)
        out, cell_next = self.cell(feats, tuple(cell_state))  # (B, T, hidden)
        logits = self.head(self.drop(out))  # (B, T, hidden) -> (B, T, classes)
        return (logits, *cell_next, x[:, -1])


class FrameOnlyRecognizer(nn.Module):
    """The baseline: the same CNN on each frame alone, no frame difference, no recurrence.

    It has no state, so whatever it gets right, a single frame shows.
    """

    state_names: tuple[str, ...] = ()

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = FrameEncoder(cfg, in_channels=3)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.embed, cfg.num_classes)

    def initial_state(self, batch: int) -> tuple[Tensor, ...]:
        return ()

    def forward(self, frames: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        """frames (B, T, H, W, 3) uint8 BGR -> (logits (B, T, classes),)."""
        B, T = frames.shape[:2]
        x = _normalise(frames, self.cfg)  # (B, T, 3, H, W)
        feats = self.encoder(x.flatten(0, 1)).view(B, T, -1)  # (B*T, 3, H, W) -> (B, T, embed)
        return (self.head(self.drop(feats)),)


Recognizer = ActionRecognizer | FrameOnlyRecognizer


def build_recognizer(cfg: ModelConfig) -> Recognizer:
    """The network `cfg` describes, freshly initialised."""
    if cfg.cell == "frame-only":
        return FrameOnlyRecognizer(cfg)
    return ActionRecognizer(cfg)


class StepModule(nn.Module):
    """One step of the recurrence, the shape the service runs (actionstream.contract).

    frames (N, H, W, 3) uint8 and the state tuple (in `state_names` order)
    -> logits (N, classes), *next state. The state comes as one tuple, not
    varargs, so the exporter sees a fixed structure whatever the cell; a
    stateless model is exported with frames alone (torch.export cannot take
    an empty tuple as an input).
    """

    def __init__(self, net: Recognizer) -> None:
        super().__init__()
        self.net = net

    def forward(self, frames: Tensor, state: tuple[Tensor, ...] = ()) -> tuple[Tensor, ...]:
        # (N, H, W, 3) -> (N, T=1, H, W, 3); logits (N, 1, C) -> (N, C)
        logits, *after = self.net(frames.unsqueeze(1), *state)
        return (logits.squeeze(1), *after)
