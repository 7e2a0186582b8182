"""The demo subject's look: a procedural face on the synthetic head, drawn by a small triangle rasterizer.

Why triangles and not Gaussians: the demo renders hundreds of frames on a CPU in seconds, sharp enough for
mediapipe's face mesh to find the face; filling the synthetic head's ~4.7k triangles with OpenCV and shading the
covered pixels takes tens of milliseconds a frame, splatting a dense Gaussian cloud with the reference rasterizer
would take seconds.

Visibility: the triangles are filled far to near by the depth of their centroids (the painter's algorithm), writing
triangle ids. On this nearly convex head that is the z-buffer's answer except at two folds: the eyeball/socket
intersection, which lies under the lids, and the jaw's underside against the top of the neck, where a few jagged
slivers would show if the jaw's shadow on the neck did not give both the same dark tone. Back faces are drawn only
where they can be seen: through the mouth, when it opens. Each pixel then gets its triangle's barycentric
coordinates.

Colour: the albedo is a procedural function of a point's position on the *template* (so skin pattern, brows and
lips stay glued to the surface as it deforms, as the landmark embedding does), tabulated once on a lattice of
barycentric points in every triangle and looked up per pixel; soft Lambert shading (a key light above-left of the
camera, plus ambient) from the posed vertex normals, interpolated over the triangles. The features sit where the
head's iBUG embedding puts them: lips between the outer-lip landmarks with a dark line along the slit, brows just
under the brow landmarks, nostrils between the nose-bottom ones, a shadow under the jaw below the contour landmarks
and hair falling to the jaw beside them; above, a hairline high on the forehead and low at the back. Drawn in
screen space from the posed, projected landmarks: the eye openings (smooth closed curves through the six eye
landmarks, so blinks close them; inside, eyeball pixels show sclera, iris and pupil on the rotating eyeball, skin
pixels sclera; outside, eyeball pixels are lid skin), lash lines, and the teeth inside an open mouth (back faces
seen through the mouth slit are its interior). Background: a soft vertical gradient; a plain shirt over the base
of the neck. Frames are rendered ``supersample`` times larger and area-averaged (anti-aliasing).

Template coordinates below are in centimetres (the synthetic head's layout: y up, z out of the face, x to the
subject's left). Rasterizing and shading run on the CPU (numpy, OpenCV); the head model runs on ``device``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..geometry.camera import Camera
from ..headmodel import HeadModel, HeadParams, vertex_normals

CM = 100.0  # metres -> centimetres

SKIN = (0.86, 0.64, 0.52)
SKIN_SHADOW = (0.55, 0.36, 0.30)
CHEEK = (0.88, 0.52, 0.46)
LIPS = (0.66, 0.30, 0.30)
LIP_LINE = (0.28, 0.10, 0.10)
BROW = (0.20, 0.13, 0.09)
HAIR = (0.16, 0.10, 0.07)
NOSTRIL = (0.22, 0.10, 0.08)
SCLERA = (0.93, 0.91, 0.88)
IRIS = (0.36, 0.24, 0.13)
PUPIL = (0.04, 0.03, 0.03)
LASH = (0.07, 0.05, 0.04)
MOUTH = (0.24, 0.06, 0.07)
TEETH = (0.86, 0.84, 0.78)
SHIRT = (0.20, 0.30, 0.45)
BACKGROUND_TOP = (0.72, 0.78, 0.82)
BACKGROUND_BOTTOM = (0.50, 0.56, 0.62)

#: direction towards the key light (world coordinates), ambient and key strengths
LIGHT = (-0.5, 0.5, 0.85)
AMBIENT, KEY = 0.38, 0.72
#: albedo lattice: points per triangle edge
LATTICE = 12
#: sub-pixel bits of OpenCV's fill and line drawing
SHIFT = 4


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _mix(a: np.ndarray, b, t: np.ndarray) -> np.ndarray:
    """Blend colours a (N, 3) towards b ((N, 3) or a triple) by t (N,)."""
    return a + (np.asarray(b, a.dtype) - a) * t[:, None]


def _segment_distance(p: np.ndarray, line: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance of points p (N, 2) to a polyline (K, 2), and the position along it in [0, 1] of the nearest point."""
    best = np.full(len(p), np.inf)
    along = np.zeros(len(p))
    for k in range(len(line) - 1):
        a, ab = line[k], line[k + 1] - line[k]
        t = np.clip(((p - a) @ ab) / (ab @ ab), 0, 1)
        d = np.hypot(p[:, 0] - a[0] - t * ab[0], p[:, 1] - a[1] - t * ab[1])
        closer = d < best
        best = np.where(closer, d, best)
        along = np.where(closer, (k + t) / (len(line) - 1), along)
    return best, along


def _noise(p: np.ndarray, seed: int, scale: float, n: int = 8) -> np.ndarray:
    """Smooth pseudo-random field of 3D points (N, 3) -> (N,), about unit variance: a sum of n random plane waves."""
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(n, 3))
    k = dirs / np.linalg.norm(dirs, axis=1, keepdims=True) * (scale * (0.6 + 0.8 * rng.random(n)))[:, None]
    return np.sin(p @ k.T.astype(p.dtype) + (2 * np.pi * rng.random(n)).astype(p.dtype)).sum(1) * math.sqrt(2.0 / n)


def _catmull_rom(points: np.ndarray, samples: int) -> np.ndarray:
    """Catmull-Rom spline through points (K, 2), each consecutive four a segment from the 2nd to the 3rd point
    -> ((K - 3) * samples, 2)."""
    p0, p1, p2, p3 = points[:-3, None], points[1:-2, None], points[2:-1, None], points[3:, None]  # (K-3, 1, 2)
    t = np.linspace(0, 1, samples, endpoint=False)[None, :, None]
    seg = 0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2 + (3 * p1 - p0 - 3 * p2 + p3) * t**3)
    return seg.reshape(-1, 2)


def closed_curve(points: np.ndarray, samples: int = 10) -> np.ndarray:
    """A smooth closed curve (Catmull-Rom spline) through 2D points (K, 2) -> (K * samples, 2)."""
    return _catmull_rom(np.concatenate([points[-1:], points, points[:2]]), samples)


def open_curve(points: np.ndarray, samples: int = 10) -> np.ndarray:
    """A smooth open curve (Catmull-Rom, end points repeated) through 2D points (K, 2) -> ((K-1) * samples + 1, 2)."""
    return np.concatenate([_catmull_rom(np.concatenate([points[:1], points, points[-1:]]), samples), points[-1:]])


def _fixed(points: np.ndarray) -> np.ndarray:
    """Continuous pixel coordinates (pixel centres at +0.5) -> OpenCV fixed point with SHIFT fractional bits."""
    return np.round((points - 0.5) * (1 << SHIFT)).astype(np.int32)


def fill_coverage(shape: tuple[int, int], polygons: list[np.ndarray]) -> np.ndarray:
    """(H, W) float32 coverage in [0, 1] of filled polygons (each (K, 2) in pixels), anti-aliased edges."""
    import cv2

    img = np.zeros(shape, np.uint8)
    cv2.fillPoly(img, [_fixed(p) for p in polygons], 255, cv2.LINE_AA, SHIFT)
    return img.astype(np.float32) * (1.0 / 255.0)


def coverage_at(polygons: list[np.ndarray], xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Coverage (N,) float32 of filled polygons (each (K, 2) in pixels) at the pixels (xs, ys) (N,) int; only the
    polygons' bounding box is drawn."""
    allp = np.concatenate(polygons)
    x0, y0 = np.floor(allp.min(0)).astype(int) - 2
    x1, y1 = np.ceil(allp.max(0)).astype(int) + 2
    out = np.zeros(len(xs), np.float32)
    inside = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
    if inside.any():
        box = fill_coverage((y1 - y0, x1 - x0), [p - [x0, y0] for p in polygons])
        out[inside] = box[ys[inside] - y0, xs[inside] - x0]
    return out


class DemoFaceRenderer:
    """Renders the procedural face on the synthetic head (or a head model with the same layout) for one camera.

    Args:
        model: the head model (template in metres; eyeballs are the triangles whose vertices are all in region "eyes").
        camera: the view; its width and height are the output size.
        supersample: render this many times larger, then area-average (anti-aliasing).
        seed: varies the skin and hair patterns.
        device: torch device the head model runs on.
    """

    def __init__(self, model: HeadModel, camera: Camera, supersample: int = 2, seed: int = 0,
                 device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.camera = camera
        self.ss = int(supersample)
        if self.ss < 1:
            raise ValueError(f"supersample must be >= 1, got {supersample}")
        self.size = (camera.height * self.ss, camera.width * self.ss)
        self.viewmat = camera.viewmat.double().cpu().numpy()
        self.K = camera.K.double().cpu().numpy().copy()
        self.K[:2] *= self.ss
        self.eye_point = np.linalg.inv(self.viewmat)[:3, 3]  # camera centre, world
        self.seed = seed
        self.faces = self.model.faces.cpu().numpy()
        template = self.model.template.double().cpu().numpy() * CM
        eyes = np.zeros(self.model.n_vertices, bool)
        eyes[self.model.regions["eyes"].cpu().numpy()] = True
        self.face_is_eye = eyes[self.faces].all(1)
        self.lmk_faces = self.model.landmark_faces.cpu().numpy()
        with torch.no_grad():
            lmk = self.model.landmarks(self.model.template[None])[0].double().cpu().numpy() * CM  # (68, 3)
        eye_v = template[eyes]
        left = eye_v[:, 0] > 0
        self.eye_centres = np.stack([eye_v[left].mean(0), eye_v[~left].mean(0)])  # left (+x), right; template cm
        self.light = np.asarray(LIGHT) / np.linalg.norm(LIGHT)
        self.template = template
        self.albedo = self._albedo_lattice(template, lmk[:, :2])  # (F, (L+1)(L+2)/2, 3) float32
        self.neck = self.model.regions["neck"].cpu().numpy()
        self.background = self._make_background()

    # ---------------------------------------------------------------------------------------------- public

    @torch.no_grad()
    def render(self, params: HeadParams) -> np.ndarray:
        """B frames of head parameters -> (B, H, W, 3) uint8 RGB at the camera's size."""
        import cv2

        params = params.to(self.device)
        verts = self.model.forward_params(params)
        normals = vertex_normals(verts, self.model.faces).double().cpu().numpy()
        lmk = self.model.landmarks(verts).double().cpu().numpy()
        verts = verts.double().cpu().numpy()
        out = np.empty((verts.shape[0], self.camera.height, self.camera.width, 3), np.uint8)
        for b in range(verts.shape[0]):
            img = self.frame(verts[b], normals[b], lmk[b])
            if self.ss > 1:
                img = cv2.resize(img, (self.camera.width, self.camera.height), interpolation=cv2.INTER_AREA)
            out[b] = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return out

    def frame(self, verts: np.ndarray, normals: np.ndarray, lmk: np.ndarray) -> np.ndarray:
        """One frame at the supersampled size from posed vertices (V, 3), their normals (V, 3) and landmarks (68, 3),
        world coordinates in metres -> (H, W, 3) float32 RGB in [0, 1]."""
        cam = verts @ self.viewmat[:3, :3].T + self.viewmat[:3, 3]
        uvw = cam @ self.K.T
        pix = uvw[:, :2] / uvw[:, 2:3]
        depth = cam[:, 2]
        lmk_pix = self._project(lmk)
        back = self._back_faces(verts)
        face_id = self._visible_triangles(pix, depth, back, lmk_pix).ravel()
        img = self.background.copy()
        flat = img.reshape(-1, 3)
        idx = np.flatnonzero(face_id >= 0)
        if len(idx):
            fid = face_id[idx]
            xs, ys = idx % self.size[1], idx // self.size[1]
            b1, b2, shade, vertex_shade = self._interpolate(pix, normals, fid, xs, ys)
            albedo = self._albedo_at(fid, b1, b2)
            color = self._eyes(albedo * shade[:, None], albedo, fid, b1, b2, xs, ys, lmk_pix, vertex_shade)
            color = self._mouth(color, fid, back, xs, ys, lmk_pix)
            flat[idx] = color
        self._draw_shirt(img, verts)
        self._draw_lashes(img, lmk_pix)
        return img

    # ---------------------------------------------------------------------------------------------- geometry

    def _project(self, points: np.ndarray) -> np.ndarray:
        """(..., 3) world points -> (..., 2) pixels of the supersampled image."""
        cam = points @ self.viewmat[:3, :3].T + self.viewmat[:3, 3]
        uvw = cam @ self.K.T
        return uvw[..., :2] / uvw[..., 2:3]

    def _back_faces(self, verts: np.ndarray) -> np.ndarray:
        """(F,) bool: head triangles turned away from the camera (the eyeballs never count)."""
        v0, v1, v2 = (verts[self.faces[:, k]] for k in range(3))
        n = np.cross(v1 - v0, v2 - v0)
        return ((n * (self.eye_point - v0)).sum(1) < 0) & ~self.face_is_eye

    def _visible_triangles(self, pix: np.ndarray, depth: np.ndarray, back: np.ndarray, lmk_pix: np.ndarray
                           ) -> np.ndarray:
        """(H, W) int32 id of the triangle seen at each pixel (-1: none), painter's algorithm far to near."""
        import cv2

        h, w = self.size
        tri = pix[self.faces]  # (F, 3, 2)
        lo, hi = tri.min(1), tri.max(1)

        def overlaps(box_lo, box_hi) -> np.ndarray:  # triangles whose bounding boxes meet the box
            return (hi[:, 0] > box_lo[0]) & (lo[:, 0] < box_hi[0]) & (hi[:, 1] > box_lo[1]) & (lo[:, 1] < box_hi[1])

        keep = (depth[self.faces] > self.camera.near).all(1) & overlaps((0, 0), (w, h))
        # back faces only around the mouth opening (a little enlarged), where they can be seen through it
        mouth = lmk_pix[60:68]
        pad = 0.2 * (mouth[:, 0].max() - mouth[:, 0].min())
        keep &= ~back | overlaps(mouth.min(0) - pad, mouth.max(0) + pad)
        order = np.flatnonzero(keep)
        order = order[np.argsort(-depth[self.faces[order]].mean(1), kind="stable")]
        ids = np.full((h, w), -1, np.int32)
        fixed = _fixed(tri)
        for f in order.tolist():
            cv2.fillConvexPoly(ids, fixed[f], f, cv2.LINE_8, SHIFT)
        return ids

    def _interpolate(self, pix: np.ndarray, normals: np.ndarray, fid: np.ndarray, xs: np.ndarray, ys: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Barycentric coordinates b1, b2 (N,) of pixel centres in their triangles, the Lambert shading (N,)
        interpolated from the vertices (Gouraud), and the vertices' shading (V,).

        Screen-space (affine) interpolation: a triangle spans millimetres of depth at tens of centimetres from the
        camera, so perspective correction would change nothing visible."""
        tri = pix[self.faces]  # (F, 3, 2)
        e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
        det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
        det = np.where(np.abs(det) < 1e-12, 1e-12, det)
        # b1 = (e2y dx - e2x dy) / det, b2 = (e1x dy - e1y dx) / det with (dx, dy) = pixel - a: affine in the pixel
        a1, c1 = e2[:, 1] / det, -e2[:, 0] / det
        a2, c2 = -e1[:, 1] / det, e1[:, 0] / det
        d1 = -(a1 * tri[:, 0, 0] + c1 * tri[:, 0, 1])
        d2 = -(a2 * tri[:, 0, 0] + c2 * tri[:, 0, 1])
        n = normals / (np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12)
        vertex_shade = AMBIENT + KEY * np.clip(n @ self.light, 0, None)
        vs = vertex_shade[self.faces]  # (F, 3) shading at the corners
        table = np.stack([a1, c1, d1, a2, c2, d2, vs[:, 0], vs[:, 1] - vs[:, 0], vs[:, 2] - vs[:, 0]], 1)
        table = table.astype(np.float32)
        t = table[fid]
        px, py = xs.astype(np.float32) + 0.5, ys.astype(np.float32) + 0.5
        b1 = np.clip(t[:, 0] * px + t[:, 1] * py + t[:, 2], 0, 1)
        b2 = np.clip(t[:, 3] * px + t[:, 4] * py + t[:, 5], 0, 1)
        return b1, b2, t[:, 6] + b1 * t[:, 7] + b2 * t[:, 8], vertex_shade

    # ---------------------------------------------------------------------------------------------- colour

    def _albedo_lattice(self, template: np.ndarray, lmk_xy: np.ndarray) -> np.ndarray:
        """The albedo tabulated at the barycentric lattice points (1 - (i + j)/L, i/L, j/L), i + j <= L, of every
        triangle, point (i, j) at i (L + 1) - i (i - 1) / 2 + j: (F, (L+1)(L+2)/2, 3) float32."""
        n = LATTICE
        i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
        ok = i + j <= n
        b = np.stack([1 - (i + j) / n, i / n, j / n], -1)[ok]  # row-major over (i, j): rows of n + 1 - i points
        pts = np.einsum("kc,fcd->fkd", b, template[self.faces])  # (F, K, 3)
        return self.skin_albedo(pts.reshape(-1, 3).astype(np.float32), lmk_xy).reshape(len(self.faces), -1, 3)

    def skin_albedo(self, p: np.ndarray, lmk_xy: np.ndarray) -> np.ndarray:
        """Albedo of head points from their template positions p (N, 3) cm and the template's landmarks' (x, y)
        (68, 2) cm -> (N, 3) RGB in [0, 1]."""
        from matplotlib.path import Path

        x, y, z = p[:, 0], p[:, 1], p[:, 2]
        front = z > 3.0
        tone = 1 + 0.025 * _noise(p, self.seed, 0.9) + 0.015 * _noise(p, self.seed + 1, 3.5)
        color = np.asarray(SKIN, np.float32) * tone[:, None]
        cheeks = np.exp(-(((np.abs(x) - 3.8) / 1.6) ** 2 + ((y + 1.8) / 1.4) ** 2) / 2)
        color = _mix(color, CHEEK, 0.35 * cheeks)
        # outside the face oval (the contour landmarks, closed over the forehead): under the chin the neck's shadow,
        # at the sides hair falling to the jaw, so the face's outline is where the embedding's contour is
        contour = lmk_xy[0:17]
        oval = np.concatenate([contour, [[contour[-1, 0], 12.0], [contour[0, 0], 12.0]]])
        lo, hi = contour.min(0) - 1.5, contour.max(0) + 1.5
        near = (z > 0) & (x > lo[0]) & (x < hi[0]) & (y > lo[1]) & (y < hi[1])  # where the contour's distance matters
        signed = np.where(z > 0, -2.0, 2.0)  # > 0 outside the oval
        d, _ = _segment_distance(p[near, :2], contour)
        signed[near] = np.where(Path(oval).contains_points(p[near, :2]), -d, d)
        shadow = np.maximum(_smoothstep(0.0, 1.2, signed), _smoothstep(-8.4, -9.8, y))
        color = _mix(color, SKIN_SHADOW, 0.55 * shadow)
        color *= (1.0 - 0.55 * _smoothstep(-13.0, -9.5, y) * (y < -8.0))[:, None]  # the jaw's shadow on the neck
        side_hair = (_smoothstep(-0.15, 0.15, signed) * _smoothstep(contour[4, 1] - 0.5, contour[3, 1] + 0.5, y)
                     * (np.abs(x) > 4.0))
        # lips between the outer-lip curves, a dark line along the slit
        upper = lmk_xy[48:55]
        lower = np.concatenate([lmk_xy[54:60], lmk_xy[48:49]])[::-1]
        half = (lmk_xy[54, 0] - lmk_xy[48, 0]) / 2
        in_x = _smoothstep(half + 0.05, half - 0.25, np.abs(x)) * front
        top, bottom = np.interp(x, upper[:, 0], upper[:, 1]), np.interp(x, lower[:, 0], lower[:, 1])
        color = _mix(color, LIPS, 0.9 * in_x * _smoothstep(0.12, -0.05, y - top) * _smoothstep(-0.12, 0.05, y - bottom))
        slit_y = lmk_xy[[60, 64], 1].mean()
        color = _mix(color, LIP_LINE, 0.8 * in_x * _smoothstep(0.12, 0.02, np.abs(y - slit_y)))
        # the sides of the nose a little darker, nostrils under its tip between the nose-bottom landmarks
        nose_sides = np.exp(-0.5 * (((np.abs(x) - 0.95) / 0.35) ** 2 + ((y - lmk_xy[30, 1]) / 1.4) ** 2)) * (z > 6.0)
        color *= (1.0 - 0.12 * nose_sides)[:, None]
        nb = lmk_xy[31:36]
        for s in (-1, 1):
            c = 0.55 * nb[2 + s] + 0.45 * nb[2] + [0.0, 0.18]
            d = ((x - c[0]) / 0.38) ** 2 + ((y - c[1]) / 0.2) ** 2
            color = _mix(color, NOSTRIL, 0.85 * _smoothstep(1.2, 0.6, d) * (z > 5.0))
        # brows: tapered bands just under the brow landmarks (thick at the inner end)
        for brow in (lmk_xy[17:22], lmk_xy[22:27]):
            near = (front & (np.abs(y - brow[:, 1].mean()) < 1.5) & (x > brow[:, 0].min() - 1)
                    & (x < brow[:, 0].max() + 1))
            q = p[near]
            d, along = _segment_distance(q[:, :2], brow - [0.0, 0.18])
            inner_first = abs(brow[0, 0]) < abs(brow[-1, 0])
            thick = 0.32 - 0.16 * (along if inner_first else 1 - along)
            strands = 0.85 + 0.15 * np.sin(q[:, 0] * 14.0 + q[:, 1] * 5.0)
            color[near] = _mix(color[near], BROW, 0.92 * strands * _smoothstep(0.06, -0.06, d - thick))
        # hair above a hairline that is high on the forehead, lower at the temples and low at the back
        az = np.degrees(np.abs(np.arctan2(x, z)))
        hairline = np.interp(az, [0.0, 25.0, 50.0, 75.0, 95.0, 130.0, 180.0], [6.6, 6.2, 4.9, 2.6, 0.8, -5.5, -7.5])
        hair = _smoothstep(-0.15, 0.15, y - hairline - 0.25 * np.sin(x * 2.2 + 0.7 * np.sin(z * 1.3)))
        hair = np.maximum(hair, side_hair)
        strands = 0.75 + 0.25 * np.sin(np.arctan2(x, z) * 70.0 + 2.0 * _noise(p, self.seed + 2, 0.7))
        hair_col = np.asarray(HAIR, np.float32) * (strands * (1 + 0.3 * _noise(p, self.seed + 3, 2.0)))[:, None]
        return np.clip(color + (hair_col - color) * hair[:, None], 0, 1).astype(np.float32)

    def _albedo_at(self, fid: np.ndarray, b1: np.ndarray, b2: np.ndarray) -> np.ndarray:
        """The albedo (N, 3) float32 of the nearest lattice point."""
        n = LATTICE
        i = np.rint(b1 * n).astype(np.int64)
        j = np.minimum(np.rint(b2 * n).astype(np.int64), n - i)
        row = i * (n + 1) - i * (i - 1) // 2
        return self.albedo[fid, row + j]

    def _eyes(self, color: np.ndarray, albedo: np.ndarray, fid: np.ndarray, b1: np.ndarray, b2: np.ndarray,
              xs: np.ndarray, ys: np.ndarray, lmk_pix: np.ndarray, vertex_shade: np.ndarray) -> np.ndarray:
        """Inside the eye openings: sclera, and on the eyeball iris and pupil. Outside them eyeball pixels are lids:
        the eyeball's (skin) albedo, shaded like the skin around the eye (not like the bulging sphere)."""
        curves = [closed_curve(lmk_pix[36:42]), closed_curve(lmk_pix[42:48])]
        almond = coverage_at(curves, xs, ys)
        on_ball = self.face_is_eye[fid]
        sel = np.flatnonzero((almond > 0) | on_ball)
        if len(sel) == 0:
            return color
        bary = np.stack([1 - b1[sel] - b2[sel], b1[sel], b2[sel]], 1)
        p = (self.template[self.faces[fid[sel]]] * bary[..., None]).sum(1)  # template position, cm
        ball = on_ball[sel]
        centre = np.where((p[:, 0] > 0)[:, None], self.eye_centres[0], self.eye_centres[1])
        d = (p - centre) / (np.linalg.norm(p - centre, axis=1, keepdims=True) + 1e-12)
        angle = np.degrees(np.arccos(np.clip(d[:, 2], -1, 1)))  # from the eyeball's forward axis
        eye_col = _mix(np.tile(np.asarray(SCLERA), (len(sel), 1)), (0.85, 0.62, 0.58), 0.5 * _smoothstep(32, 60, angle))
        iris = np.asarray(IRIS) * (0.8 + 0.2 * np.sin(23.0 * np.arctan2(d[:, 1], d[:, 0])))[:, None]
        iris = _mix(iris, (0.12, 0.08, 0.05), _smoothstep(20, 27, angle))  # dark limbal ring
        iris = _mix(iris, PUPIL, _smoothstep(11, 9, angle))
        eye_col = eye_col + (iris - eye_col) * (_smoothstep(29, 27, angle) * ball)[:, None]
        eye_col *= (1 - 0.25 * _smoothstep(-0.1, 0.5, d[:, 1]) * ball)[:, None]  # the upper lid's shadow
        around = [vertex_shade[self.faces[self.lmk_faces[ids]]].mean() for ids in (slice(42, 48), slice(36, 42))]
        lid = albedo[sel] * np.where(p[:, 0] > 0, around[0], around[1])[:, None]
        outside = np.where(ball[:, None], lid, color[sel])
        a = almond[sel, None]
        color[sel] = (outside + (eye_col - outside) * a).astype(np.float32)
        return color

    def _mouth(self, color: np.ndarray, fid: np.ndarray, back: np.ndarray, xs: np.ndarray, ys: np.ndarray,
               lmk_pix: np.ndarray) -> np.ndarray:
        """Back faces seen through the open mouth: a dark interior, upper teeth under the upper lip, lower above."""
        sel = np.flatnonzero(back[fid])
        if len(sel) == 0:
            return color
        iod = float(np.linalg.norm(lmk_pix[36] - lmk_pix[45]))
        upper, lower = lmk_pix[[61, 62, 63]], lmk_pix[[65, 66, 67]]  # middle of the inner lip lines

        def band(edge: np.ndarray, height: float) -> np.ndarray:  # a strip of teeth hanging from a lip's inner edge
            centre = edge.mean(0)
            outer = centre + (edge - centre) * [1.5, 1.0]
            inner = centre + (edge - centre) * [1.35, 1.0] + [0.0, height]
            return np.concatenate([outer, inner[::-1]])

        teeth_polys = [band(upper, 0.06 * iod), band(lower, -0.035 * iod)]
        teeth = coverage_at(teeth_polys, xs[sel], ys[sel])
        depth = 1.0 - 0.5 * _smoothstep(0.0, 0.45 * iod, np.abs(xs[sel] + 0.5 - upper[:, 0].mean()))  # dark corners
        inner = np.asarray(MOUTH) * depth[:, None]
        color[sel] = _mix(inner, TEETH, teeth * (0.55 + 0.45 * depth)).astype(np.float32)
        return color

    # ---------------------------------------------------------------------------------------------- layers

    def _make_background(self) -> np.ndarray:
        """(H, W, 3) float32: a vertical blue-grey gradient with a soft vignette."""
        h, w = self.size
        t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
        top, bottom = np.array(BACKGROUND_TOP, np.float32), np.array(BACKGROUND_BOTTOM, np.float32)
        xx = (np.arange(w, dtype=np.float32) / w - 0.5)[None, :, None]
        yy = (np.arange(h, dtype=np.float32) / h - 0.45)[:, None, None]
        img = (top + (bottom - top) * t) * (1.0 - 0.25 * (xx**2 + yy**2))  # gradient, soft vignette
        return np.ascontiguousarray(np.broadcast_to(img, (h, w, 3)), dtype=np.float32)

    def _draw_shirt(self, img: np.ndarray, verts: np.ndarray) -> None:
        """A plain shirt over the base of the neck: a round collar and shoulders, following the neck's base."""
        neck = verts[self.neck]
        base = neck[neck[:, 1] < neck[:, 1].min() + 0.01].mean(0)  # centre of the neck's lowest ring
        outline = base + np.array([
            (-0.048, 0.075, 0.05), (-0.10, 0.055, 0.0), (-0.20, 0.01, 0.0), (-0.26, -0.08, 0.0), (-0.28, -0.30, 0.0),
            (0.28, -0.30, 0.0), (0.26, -0.08, 0.0), (0.20, 0.01, 0.0), (0.10, 0.055, 0.0), (0.048, 0.075, 0.05),
            (0.0, 0.05, 0.07)])
        poly = closed_curve(self._project(outline), 6)
        top = int(max(poly[:, 1].min() - 2, 0))
        cover = fill_coverage((self.size[0] - top, self.size[1]), [poly - [0.0, top]])[..., None]
        rows = np.linspace(0, 1, self.size[0] - top, dtype=np.float32)[:, None, None]
        shirt = np.asarray(SHIRT, np.float32) * (0.9 + 0.2 * rows)
        region = img[top:]
        region += (shirt - region) * cover

    def _draw_lashes(self, img: np.ndarray, lmk_pix: np.ndarray) -> None:
        """Dark lash lines along the upper lids (thick) and lower lids (thin), anti-aliased."""
        import cv2

        iod = float(np.linalg.norm(lmk_pix[36] - lmk_pix[45]))
        for up, low in (((36, 37, 38, 39), (39, 40, 41, 36)), ((42, 43, 44, 45), (45, 46, 47, 42))):
            pts = lmk_pix[list(up) + list(low)]
            pad = int(0.1 * iod) + 2
            x0, y0 = np.maximum(np.floor(pts.min(0)).astype(int) - pad, 0)
            x1, y1 = np.minimum(np.ceil(pts.max(0)).astype(int) + pad, [self.size[1], self.size[0]])
            if x1 <= x0 or y1 <= y0:
                continue
            alpha = np.zeros((y1 - y0, x1 - x0), np.float32)
            for ids, width, strength in ((up, 0.028, 0.9), (low, 0.012, 0.45)):
                layer = np.zeros_like(alpha, dtype=np.uint8)
                curve = open_curve(lmk_pix[list(ids)]) - [x0, y0]
                cv2.polylines(layer, [_fixed(curve)], False, 255, max(1, round(width * iod)), cv2.LINE_AA, SHIFT)
                alpha = np.maximum(alpha, layer * (strength / 255.0))
            roi = img[y0:y1, x0:x1]
            roi += (np.asarray(LASH, np.float32) - roi) * alpha[..., None]
