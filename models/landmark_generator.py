"""The landmark generator (paper section 3.1): audio, pose and reference landmarks -> jaw and lip landmarks.

Three encoders embed a T-frame window of mel windows, the T frames' pose landmarks and Nl reference landmark
sets to 512-d tokens; one shared LayerNorm; sinusoidal temporal encoding on the audio and pose tokens and a
learned modality embedding on all; a post-norm Transformer encoder over [references, audio, pose]; the lip head
reads the audio tokens and the jaw head the pose tokens.
"""
from __future__ import annotations

import torch
from torch import nn

from data.landmarks import NUM_JAW, NUM_LIP
from models.layers import ConvBlock, audio_encoder, sinusoidal_encoding

POSE, AUDIO, REFERENCE = 1, 2, 3  # modality ids; 0 is padding


def landmark_encoder(length: int) -> nn.Sequential:
    """(N, 2, length) landmarks -> (N, 512, 1) for length 131 (reference) or 74 (pose), as the official stacks."""
    def res(c):
        return ConvBlock(c, c, 3, 1, 1, residual=True, dims=1)

    def down(cin, cout):
        return ConvBlock(cin, cout, 3, 2, 1, dims=1)

    if length == 131:  # 131 -> 66 -> 33 -> 17 -> 9 -> 5 -> 3 -> 1
        return nn.Sequential(
            ConvBlock(2, 4, 3, 1, 1, dims=1),
            down(4, 8), res(8), res(8), down(8, 16), res(16), res(16), down(16, 32), res(32), res(32),
            down(32, 64), res(64), res(64), down(64, 128), res(128), res(128), down(128, 256), res(256),
            ConvBlock(256, 512, 3, 1, 0, dims=1),
            ConvBlock(512, 512, 1, 1, 0, activation="tanh", dims=1),
        )
    if length == 74:  # 74 -> 74 -> 37 -> 19 -> 10 -> 5 -> 3 -> 1
        return nn.Sequential(
            ConvBlock(2, 4, 3, 1, 1, dims=1),
            ConvBlock(4, 8, 3, 1, 1, dims=1), res(8), res(8), down(8, 16), res(16), res(16),
            down(16, 32), res(32), res(32), down(32, 64), res(64), res(64), down(64, 128), res(128), res(128),
            down(128, 256), res(256), res(256),
            ConvBlock(256, 512, 3, 1, 0, dims=1),
            ConvBlock(512, 512, 1, 1, 0, residual=True, activation="tanh", dims=1),
        )
    raise ValueError(f"no landmark encoder for {length} points")


class FusionTransformer(nn.Module):
    """Adds temporal and modality encodings to the tokens and runs the Transformer encoder over them."""

    def __init__(self, d_model: int, layers: int, heads: int, feed_forward: int, dropout: float, max_len: int = 512):
        super().__init__()
        self.register_buffer("temporal", sinusoidal_encoding(max_len, d_model), persistent=False)
        # A buffer, not a tensor made in forward: building one on the GPU each call is a host-device copy.
        self.register_buffer("kinds", torch.tensor([REFERENCE, AUDIO, POSE]), persistent=False)
        self.modality = nn.Embedding(4, d_model, padding_idx=0)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(d_model, heads, feed_forward, dropout, batch_first=True)
        self.transformer_encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, ref: torch.Tensor, audio: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """(B, Nl, d), (B, T, d), (B, T, d) -> (B, Nl + 2T, d)."""
        steps = audio.shape[1]
        ref = ref + self.modality(self.kinds[0])
        audio = audio + self.temporal[:steps] + self.modality(self.kinds[1])
        pose = pose + self.temporal[:steps] + self.modality(self.kinds[2])
        return self.transformer_encoder(self.dropout(torch.cat([ref, audio, pose], dim=1)))


class LandmarkGenerator(nn.Module):
    """model(mels, pose, ref_pose, ref_content) -> content.

    mels (B, T, 1, 80, 16); pose (B, T, 2, 74); ref_pose (B, Nl, 2, 74); ref_content (B, Nl, 2, 57);
    returns content (B, T, 2, 57): jaw 17 then lip 40, x row then y row, normalised to the crop.
    """

    def __init__(self, d_model: int = 512, layers: int = 4, heads: int = 4, feed_forward: int = 1024,
                 dropout: float = 0.1):
        super().__init__()
        if d_model != 512:
            raise ValueError("d_model must be 512: the encoders emit 512-d embeddings")
        self.mel_encoder = audio_encoder(last_activation="tanh")
        self.pose_encoder = landmark_encoder(74)
        self.ref_encoder = landmark_encoder(131)
        self.fusion_transformer = FusionTransformer(d_model, layers, heads, feed_forward, dropout)
        self.lip_head = nn.Linear(d_model, NUM_LIP * 2)
        self.jaw_head = nn.Linear(d_model, NUM_JAW * 2)
        for module in self.modules():  # the official init: Xavier-normal linears (attention's too), zero biases
            if isinstance(module, nn.Linear):
                nn.init.xavier_normal_(module.weight)
                nn.init.zeros_(module.bias)
        self.norm = nn.LayerNorm(d_model)  # one LayerNorm shared by the three embeddings

    def encode_references(self, ref_pose: torch.Tensor, ref_content: torch.Tensor) -> torch.Tensor:
        """(B, Nl, 2, 74) and (B, Nl, 2, 57) -> reference tokens (B, Nl, 512)."""
        batch, refs = ref_pose.shape[:2]
        references = torch.cat([ref_pose, ref_content], dim=3).flatten(0, 1)  # (B*Nl, 2, 131)
        return self.norm(self.ref_encoder(references).flatten(1)).view(batch, refs, -1)

    def encode_frames(self, mels: torch.Tensor, pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-frame tokens: mels (K, 1, 80, 16) and pose (K, 2, 74) -> audio and pose tokens, (K, 512) each.
        Each frame is encoded on its own, so overlapping windows can share one encoding per frame."""
        audio = self.norm(self.mel_encoder(mels).flatten(1))
        return audio, self.norm(self.pose_encoder(pose).flatten(1))

    def fuse(self, ref_tokens: torch.Tensor, audio: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """Tokens (B or 1, Nl, 512), (B, T, 512), (B, T, 512) -> content (B, T, 2, 57)."""
        batch, steps, refs = audio.shape[0], audio.shape[1], ref_tokens.shape[1]
        tokens = self.fusion_transformer(ref_tokens.expand(batch, -1, -1), audio, pose)
        lip = self.lip_head(tokens[:, refs:refs + steps])  # (B, T, 80): 40 interleaved (x, y) pairs
        jaw = self.jaw_head(tokens[:, refs + steps:])  # (B, T, 34)
        content = torch.cat([jaw, lip], dim=2).view(batch, steps, NUM_JAW + NUM_LIP, 2)
        return content.transpose(2, 3)  # (B, T, 2, 57)

    def forward(self, mels: torch.Tensor, pose: torch.Tensor, ref_pose: torch.Tensor,
                ref_content: torch.Tensor) -> torch.Tensor:
        batch, steps = mels.shape[:2]
        audio, pose_tokens = self.encode_frames(mels.flatten(0, 1), pose.flatten(0, 1))
        return self.fuse(self.encode_references(ref_pose, ref_content), audio.view(batch, steps, -1),
                         pose_tokens.view(batch, steps, -1))
