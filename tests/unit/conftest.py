"""Unit tests: CPU only, no files from shared/."""

import torch

torch.set_num_threads(1)


class StandInInception(torch.nn.Module):
    """The FID network's interface ([N, 3, 299, 299] -> [N, D]) at D = 8: 2x2 average pool and a fixed projection."""

    def __init__(self):
        super().__init__()
        self.register_buffer("projection", torch.randn(12, 8, generator=torch.Generator().manual_seed(0)))

    def forward(self, x):
        return torch.relu(torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1) @ self.projection)
