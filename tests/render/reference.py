"""A slow, obvious float64 rasterizer used as the reference in the render tests.

Loops over triangles; for each, evaluates the 2-D barycentrics of every pixel
centre in its box. Coverage, culling and the depth test use the vertices
snapped to ``1 / 2**subpixel_bits`` pixel about the image centre (as the
rasterizers do); the returned barycentrics and depth are the unsnapped
triangle's. No tie rule: callers compare only unambiguous pixels (returned as
``clear``: every triangle's snapped edges are at least ``margin`` pixels away).
"""
from __future__ import annotations

import torch


def _snap(c, size, bits):
    if bits is None:
        return c
    return torch.round((c - size / 2) * 2**bits) / 2**bits + size / 2


def reference_rasterize(screen, triangles, height, width, near=10.0, far=10000.0, margin=1e-6, subpixel_bits=4):
    """``(tri_id (H, W), bary (H, W, 3), depth (H, W), clear (H, W))`` for one mesh (no batch)."""
    s = screen.detach().to(torch.float64)
    snapped = torch.stack([_snap(s[:, 0], width, subpixel_bits), _snap(s[:, 1], height, subpixel_bits)], 1)
    tri_id = torch.full((height, width), -1, dtype=torch.int64)
    depth = torch.full((height, width), float("inf"), dtype=torch.float64)
    key = torch.full((height, width), float("inf"), dtype=torch.float64)
    bary = torch.zeros(height, width, 3, dtype=torch.float64)
    clear = torch.ones(height, width, dtype=torch.bool)
    for t, (a, b, c) in enumerate(triangles.tolist()):
        p = s[[a, b, c]]
        x0, y0, z = p[:, 0], p[:, 1], p[:, 2]  # unsnapped: barycentrics and depth
        x, y = snapped[[a, b, c], 0], snapped[[a, b, c], 1]  # snapped: coverage, culling, depth test
        area = (x[1] - x[0]) * (y[2] - y[0]) - (x[2] - x[0]) * (y[1] - y[0])
        if not (area < 0) or z.min() <= near or z.max() >= far:
            continue
        # pixel centres in the (slightly grown) bounding box
        j0, j1 = max(0, int(x.min()) - 1), min(width, int(x.max()) + 2)
        i0, i1 = max(0, int(y.min()) - 1), min(height, int(y.max()) + 2)
        if j0 >= j1 or i0 >= i1:
            continue
        jj, ii = torch.meshgrid(torch.arange(j0, j1, dtype=torch.float64) + 0.5,
                                torch.arange(i0, i1, dtype=torch.float64) + 0.5, indexing="xy")
        e = []
        for k in range(3):
            a1, a2 = (k + 1) % 3, (k + 2) % 3
            e.append((x[a2] - x[a1]) * (ii - y[a1]) - (y[a2] - y[a1]) * (jj - x[a1]))
        sk = torch.stack(e, -1) / area  # screen barycentrics, all >= 0 inside
        lengths = torch.stack([torch.hypot(x[(k + 2) % 3] - x[(k + 1) % 3], y[(k + 2) % 3] - y[(k + 1) % 3])
                               for k in range(3)])
        dist = sk * area.abs() / lengths  # distance to each edge line in pixels (signed)
        near_edge = (dist.abs() < margin).any(-1) & (dist > -margin).all(-1)
        clear[i0:i1, j0:j1] &= ~near_edge
        inside = (sk > 0).all(-1)
        q = sk / z
        d_snapped = 1.0 / (q.sum(-1))  # perspective-correct depth on the snapped triangle (depth test)
        e0 = []
        for k in range(3):
            a1, a2 = (k + 1) % 3, (k + 2) % 3
            e0.append((x0[a2] - x0[a1]) * (ii - y0[a1]) - (y0[a2] - y0[a1]) * (jj - x0[a1]))
        q0 = torch.stack(e0, -1) / z
        lam = q0 / q0.sum(-1, keepdim=True)
        d = (lam * z).sum(-1)
        win = inside & (d_snapped < key[i0:i1, j0:j1])
        tri_id[i0:i1, j0:j1][win] = t
        key[i0:i1, j0:j1][win] = d_snapped[win]
        depth[i0:i1, j0:j1][win] = d[win]
        bary[i0:i1, j0:j1][win] = lam[win]
    return tri_id, bary, depth, clear
