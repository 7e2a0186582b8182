"""AvatarRenderer.frames: frames made in parallel threads are the frames made one at a time, in order."""

from __future__ import annotations

import numpy as np
import torch

from gaussian_flametalk.avatar.sequence import AvatarRenderer
from gaussian_flametalk.io.subject import Subject
from test_drive import trained_subject  # noqa: F401  (the fixture)


def test_parallel_frames_equal_sequential_ones_in_order(trained_subject):
    subject = Subject.open(trained_subject)
    model = subject.head_model()
    renderer = AvatarRenderer.load(subject, model, trained_subject / "avatar")
    n = 11
    rng = np.random.default_rng(0)
    sources = rng.integers(0, subject.n_frames, n)
    params = subject.params()
    with torch.no_grad():
        verts = model.forward_params(params[torch.as_tensor(sources)])
    verts = verts + 0.002 * torch.randn(verts.shape, generator=torch.Generator().manual_seed(0))

    def finish(img, weight, source):  # what a full-frame paste receives: the frame, its weight and the source index
        return np.concatenate([img, (255 * weight[..., None]).astype(np.uint8), np.full_like(img[..., :1], source)],
                              axis=-1)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = list(renderer.frames(verts, sources, finish, workers=1))
    finally:
        torch.set_num_threads(threads)
    many = list(renderer.frames(verts, sources, finish, workers=3))
    assert torch.get_num_threads() == threads  # restored after the parallel run
    assert len(one) == len(many) == n
    for t, (a, b) in enumerate(zip(one, many)):
        assert int(a[0, 0, 4]) == int(sources[t])  # in order
        np.testing.assert_array_equal(a, b)
    assert len({a.tobytes() for a in one}) == n  # the frames differ: the comparison is not between blanks
