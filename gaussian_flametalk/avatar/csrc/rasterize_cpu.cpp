// Compiled CPU rasterizer of gaussian-flametalk: EWA projection + SH, tile binning, per-tile depth sort, front-to-back
// compositing, and the analytic backward of all of it, in float32, multithreaded over Gaussians and tiles.
//
// The convention is the one written down in gaussian_flametalk/avatar/rasterize.py (gsplat 1.5.3 classic mode) and
// implemented readably by rasterize_ref.py; this file is written from that convention and its maths, not from any
// other rasterizer's source. Plain C ABI on raw buffers (called through ctypes): no Python or torch headers, so it
// compiles in seconds with any C++17 compiler and does not depend on the torch version. Threads are std::thread with
// dynamic scheduling (an atomic work counter), not OpenMP, so it builds with compilers that lack OpenMP (Apple
// clang) and never meets a second OpenMP runtime beside torch's.
//
// Layouts (row-major, float32 unless noted). C views, N Gaussians per view, D colour channels.
//   Gaussian inputs are (C, N, ...) with a per-view stride in elements that is 0 for tensors shared by every view.
//   viewmats (C, 4, 4) world-to-camera, Ks (C, 3, 3).
//   means2d (C, N, 2), conics (C, N, 3) = (a, b, c) of the inverse dilated 2D covariance, depths (C, N),
//   radii (C, N, 2) int32, tile_offsets (C * tiles_y * tiles_x + 1) int64, ids (P,) int32 flat c * N + n.
//   images (C, H, W, D), transmittance (C, H, W), n_contrib (C, H, W) int32 (1 + list position of the last
//   Gaussian composited into the pixel, 0 for none).

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include "parallel.h"

using gft::parallel_for;

namespace {

constexpr int TILE = 16;
constexpr int TILE_PIX = TILE * TILE;
constexpr float ALPHA_MIN = 1.0f / 255.0f;
constexpr float ALPHA_MAX = 0.999f;
constexpr float T_MIN = 1e-4f;
constexpr float EXTENT_MAX = 3.33f;
constexpr float JACOBIAN_MARGIN = 0.15f;

constexpr float C0 = 0.28209479177387814f;
constexpr float C1 = 0.4886025119029199f;
constexpr float C2_XY = 1.0925484305920792f;
constexpr float C2_Z2 = 0.31539156525252005f;
constexpr float C2_X2Y2 = 0.5462742152960396f;
constexpr float C3_A = 0.5900435899266435f;
constexpr float C3_B = 2.890611442640554f;
constexpr float C3_C = 0.4570457994644658f;
constexpr float C3_D = 0.3731763325901154f;
constexpr float C3_E = 1.445305721320277f;

struct Camera {
    float R[9];
    float t[3];
    float fx, fy, cx, cy;
    float campos[3];
};

Camera load_camera(const float* viewmats, const float* Ks, int64_t view) {
    Camera cam;
    const float* v = viewmats + view * 16;
    const float* k = Ks + view * 9;
    for (int i = 0; i < 3; ++i) {
        for (int j = 0; j < 3; ++j) cam.R[i * 3 + j] = v[i * 4 + j];
        cam.t[i] = v[i * 4 + 3];
    }
    cam.fx = k[0];
    cam.fy = k[4];
    cam.cx = k[2];
    cam.cy = k[5];
    for (int j = 0; j < 3; ++j)  // campos = -R^T t
        cam.campos[j] = -(cam.R[0 * 3 + j] * cam.t[0] + cam.R[1 * 3 + j] * cam.t[1] + cam.R[2 * 3 + j] * cam.t[2]);
    return cam;
}

// Rotation matrix of the normalised quaternion (w, x, y, z); returns the norm.
inline float quat_to_rot(const float* q, float* R, float* qn) {
    const float norm = std::sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]);
    const float w = q[0] / norm, x = q[1] / norm, y = q[2] / norm, z = q[3] / norm;
    qn[0] = w, qn[1] = x, qn[2] = y, qn[3] = z;
    R[0] = 1.f - 2.f * (y * y + z * z);
    R[1] = 2.f * (x * y - w * z);
    R[2] = 2.f * (x * z + w * y);
    R[3] = 2.f * (x * y + w * z);
    R[4] = 1.f - 2.f * (x * x + z * z);
    R[5] = 2.f * (y * z - w * x);
    R[6] = 2.f * (x * z - w * y);
    R[7] = 2.f * (y * z + w * x);
    R[8] = 1.f - 2.f * (x * x + y * y);
    return norm;
}

// SH bases (gsplat order) at a unit direction; n = (degree + 1)^2 values.
inline void sh_basis(int degree, float x, float y, float z, float* b) {
    b[0] = C0;
    if (degree < 1) return;
    b[1] = -C1 * y;
    b[2] = C1 * z;
    b[3] = -C1 * x;
    if (degree < 2) return;
    const float xx = x * x, yy = y * y, zz = z * z;
    b[4] = C2_XY * x * y;
    b[5] = -C2_XY * y * z;
    b[6] = C2_Z2 * (3.f * zz - 1.f);
    b[7] = -C2_XY * x * z;
    b[8] = C2_X2Y2 * (xx - yy);
    if (degree < 3) return;
    b[9] = -C3_A * y * (3.f * xx - yy);
    b[10] = C3_B * x * y * z;
    b[11] = -C3_C * y * (5.f * zz - 1.f);
    b[12] = C3_D * z * (5.f * zz - 3.f);
    b[13] = -C3_C * x * (5.f * zz - 1.f);
    b[14] = C3_E * z * (xx - yy);
    b[15] = -C3_A * x * (xx - 3.f * yy);
}

// Gradient of sum_k w[k] * basis_k(x, y, z) w.r.t. the unit direction, added to g[3].
inline void sh_basis_vjp(int degree, float x, float y, float z, const float* w, float* g) {
    if (degree < 1) return;
    g[1] += -C1 * w[1];
    g[2] += C1 * w[2];
    g[0] += -C1 * w[3];
    if (degree < 2) return;
    const float xx = x * x, yy = y * y, zz = z * z;
    g[0] += C2_XY * (y * w[4] - z * w[7]) + C2_X2Y2 * 2.f * x * w[8];
    g[1] += C2_XY * (x * w[4] - z * w[5]) - C2_X2Y2 * 2.f * y * w[8];
    g[2] += -C2_XY * (y * w[5] + x * w[7]) + C2_Z2 * 6.f * z * w[6];
    if (degree < 3) return;
    g[0] += -C3_A * 6.f * x * y * w[9] + C3_B * y * z * w[10] - C3_C * (5.f * zz - 1.f) * w[13] +
            C3_E * 2.f * x * z * w[14] - C3_A * 3.f * (xx - yy) * w[15];
    g[1] += -C3_A * 3.f * (xx - yy) * w[9] + C3_B * x * z * w[10] - C3_C * (5.f * zz - 1.f) * w[11] -
            C3_E * 2.f * y * z * w[14] + C3_A * 6.f * x * y * w[15];
    g[2] += C3_B * x * y * w[10] - C3_C * 10.f * y * z * w[11] + C3_D * (15.f * zz - 3.f) * w[12] -
            C3_C * 10.f * x * z * w[13] + C3_E * (xx - yy) * w[14];
}

struct TileGrid {
    int width, height, tiles_x, tiles_y;
};

// Tile range [x0, x1) x [y0, y1) of a box mean +- radius (the reference's floor / ceil of (mean -+ r) / 16).
inline void tile_rect(float mx, float my, float rx, float ry, const TileGrid& g, int& x0, int& x1, int& y0, int& y1) {
    auto clampi = [](float v, int hi) { return static_cast<int>(std::min(std::max(v, 0.f), static_cast<float>(hi))); };
    x0 = clampi(std::floor((mx - rx) / TILE), g.tiles_x);
    x1 = clampi(std::ceil((mx + rx) / TILE), g.tiles_x);
    y0 = clampi(std::floor((my - ry) / TILE), g.tiles_y);
    y1 = clampi(std::ceil((my + ry) / TILE), g.tiles_y);
}

// Pixel columns (or rows) [lo, hi] of the tile starting at `origin` (with `extent` pixels) whose centres lie within
// mean +- r; pixels outside have opacity * exp(-sigma) < 1/255 and are skipped by the compositing rule anyway.
inline void pixel_span(float mean, float r, int origin, int extent, int& lo, int& hi) {
    const float first = std::ceil(mean - r - 0.5f), last = std::floor(mean + r - 0.5f);
    lo = static_cast<int>(std::max(first, static_cast<float>(origin))) - origin;
    hi = static_cast<int>(std::min(last, static_cast<float>(origin + extent - 1))) - origin;
}

// One Gaussian as seen from one tile: its screen-space parameters and the box columns / rows it covers there.
struct Splat {
    float mx, my, a, b, c, o, cut;  // cut = ln(255 o): opacity * exp(-sigma) >= 1/255 exactly where sigma <= cut
    float inv_a, q, reach;           // 1 / a, b^2 - a c, 2 a cut (1 + 1e-3): the chords' per-Gaussian constants
    int c0, c1, r0, r1;              // tile-local pixel columns / rows within mean +- radii
};

// Tile-local columns [lo, hi] of the row at vertical offset dy = my - (row centre) where the Gaussian can reach the
// 1/255 cut-off: the chord of the ellipse sigma <= cut, widened by a margin far above float32 rounding and clipped to
// the box. Only a saving: each pixel of the chord still gets the exact alpha test, and pixels outside it have
// sigma > cut (alpha < 1/255), so they would be skipped anyway. Forward and backward use the same chords.
inline bool row_chord(const Splat& s, float dy, int ox, int& lo, int& hi) {
    // sigma = 0.5 a dx^2 + b dx dy + 0.5 c dy^2 <= cut, solved for dx (the discriminant widened by 0.1 %)
    const float disc = dy * dy * s.q + s.reach;
    if (disc < 0.f) return false;
    const float half = std::sqrt(disc) * s.inv_a;
    const float centre = s.mx + s.b * dy * s.inv_a;
    const float margin = 0.02f + 1e-3f * half;
    const float lim_lo = float(ox + s.c0), lim_hi = float(ox + s.c1);
    const float first = std::max(std::ceil(centre - half - margin - 0.5f), lim_lo);
    const float last = std::min(std::floor(centre + half + margin - 0.5f), lim_hi);
    if (!(first <= last)) return false;
    lo = int(first) - ox;
    hi = int(last) - ox;
    return true;
}

// Bands of tile rows that the binning splits each view into (a few per thread, for balance).
inline int band_count(const TileGrid& g, int threads) { return std::max(1, std::min(g.tiles_y, 2 * threads)); }

inline void band_rows(const TileGrid& g, int bands, int band, int& lo, int& hi) {
    lo = int(int64_t(band) * g.tiles_y / bands);
    hi = int(int64_t(band + 1) * g.tiles_y / bands);
}

// Sortable 32-bit key of a float (monotone for every finite value).
inline uint32_t float_key(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

#ifdef GFT_STATS
std::atomic<int64_t> stat_pairs(0), stat_rows(0), stat_evals(0), stat_drawn(0);
#define STAT(x) x
#else
#define STAT(x)
#endif

}  // namespace

extern "C" {
#ifdef GFT_STATS
void gft_stats(int64_t* out) { out[0] = stat_pairs; out[1] = stat_rows; out[2] = stat_evals; out[3] = stat_drawn; }
#endif

int gft_abi_version() { return 3; }

// Number of non-finite values among n floats.
int64_t gft_count_nonfinite(const float* x, int64_t n, int threads) {
    std::atomic<int64_t> bad(0);
    parallel_for(n, 1 << 18, threads, [&](int64_t b, int64_t e) {
        int64_t count = 0;
        for (int64_t i = b; i < e; ++i) count += !std::isfinite(x[i]);
        if (count) bad += count;
    });
    return bad.load();
}

// EWA projection (+ SH colours when sh_degree >= 0) of every (view, Gaussian), and per-tile pair counts.
// Writes means2d, conics, depths, radii, colors_out (C, N, 3; only with SH) and tile_offsets (prefix sums, length
// C * tiles + 1). Returns the number of (tile, Gaussian) pairs.
int64_t gft_project_forward(int64_t C, int64_t N, const float* means, int64_t means_vs, const float* quats,
                            int64_t quats_vs, const float* scales, int64_t scales_vs, const float* opac,
                            int64_t opac_vs, const float* coeffs, int64_t coeffs_vs, int64_t coeffs_k, int sh_degree,
                            const float* viewmats, const float* Ks, int width, int height, float near_plane,
                            float far_plane, float eps2d, float* means2d, float* conics, float* depths, int32_t* radii,
                            float* colors_out, int64_t* tile_offsets, int threads) {
    const TileGrid grid{width, height, (width + TILE - 1) / TILE, (height + TILE - 1) / TILE};
    const int64_t tiles_per_view = int64_t(grid.tiles_x) * grid.tiles_y;
    std::vector<Camera> cams(C);
    for (int64_t v = 0; v < C; ++v) cams[v] = load_camera(viewmats, Ks, v);
    const int n_bases = sh_degree >= 0 ? (sh_degree + 1) * (sh_degree + 1) : 0;

    parallel_for(C * N, 1024, threads, [&](int64_t begin, int64_t end) {
        float basis[16];
        for (int64_t i = begin, v = begin / N, n = begin % N; i < end; ++i, n = (n + 1 == N) ? (++v, 0) : n + 1) {
            // v, n: view and Gaussian of the flat index i (kept incrementally: no 64-bit divisions per Gaussian)
            const Camera& cam = cams[v];
            const float* m = means + v * means_vs + n * 3;
            const float* q = quats + v * quats_vs + n * 4;
            const float* s = scales + v * scales_vs + n * 3;
            const float o = opac[v * opac_vs + n];
            const float* R = cam.R;
            float p[3];
            for (int r = 0; r < 3; ++r) p[r] = R[r * 3] * m[0] + R[r * 3 + 1] * m[1] + R[r * 3 + 2] * m[2] + cam.t[r];
            depths[i] = p[2];
            const bool in_depth = p[2] >= near_plane && p[2] <= far_plane;
            const float z = in_depth ? p[2] : 1.f;
            const float xz = p[0] / z, yz = p[1] / z;
            const float mx = cam.fx * xz + cam.cx, my = cam.fy * yz + cam.cy;
            means2d[i * 2] = mx;
            means2d[i * 2 + 1] = my;
            const float mgx = JACOBIAN_MARGIN * width / cam.fx, mgy = JACOBIAN_MARGIN * height / cam.fy;
            const float jx = std::min(std::max(xz, -(cam.cx / cam.fx + mgx)), (width - cam.cx) / cam.fx + mgx);
            const float jy = std::min(std::max(yz, -(cam.cy / cam.fy + mgy)), (height - cam.cy) / cam.fy + mgy);
            // T = J W (2 x 3), J = [[fx/z, 0, -fx jx/z], [0, fy/z, -fy jy/z]]
            const float j00 = cam.fx / z, j02 = -cam.fx * jx / z, j11 = cam.fy / z, j12 = -cam.fy * jy / z;
            float T[6];
            for (int c = 0; c < 3; ++c) {
                T[c] = j00 * R[c] + j02 * R[6 + c];
                T[3 + c] = j11 * R[3 + c] + j12 * R[6 + c];
            }
            float Rq[9], qn[4];
            quat_to_rot(q, Rq, qn);
            float M[6];  // T Rq S
            for (int r = 0; r < 2; ++r)
                for (int c = 0; c < 3; ++c)
                    M[r * 3 + c] = (T[r * 3] * Rq[c] + T[r * 3 + 1] * Rq[3 + c] + T[r * 3 + 2] * Rq[6 + c]) * s[c];
            const float a = M[0] * M[0] + M[1] * M[1] + M[2] * M[2] + eps2d;
            const float b = M[0] * M[3] + M[1] * M[4] + M[2] * M[5];
            const float cc = M[3] * M[3] + M[4] * M[4] + M[5] * M[5] + eps2d;
            float det = a * cc - b * b;
            const bool ok_det = det > 0.f;
            if (!ok_det) det = 1.f;
            conics[i * 3] = cc / det;
            conics[i * 3 + 1] = -b / det;
            conics[i * 3 + 2] = a / det;
            float extent = std::sqrt(2.f * std::log(std::max(o, ALPHA_MIN) / ALPHA_MIN));
            extent = std::min(extent, EXTENT_MAX);
            // (capped far beyond any image so that the int32 radii cannot overflow)
            const float rx = std::min(std::ceil(extent * std::sqrt(a)), 1e9f);
            const float ry = std::min(std::ceil(extent * std::sqrt(cc)), 1e9f);
            const bool on_image = (mx + rx > 0.f) && (mx - rx < width) && (my + ry > 0.f) && (my - ry < height);
            const bool visible = in_depth && ok_det && o >= ALPHA_MIN && (rx > 0.f || ry > 0.f) && on_image;
            radii[i * 2] = visible ? static_cast<int32_t>(rx) : 0;
            radii[i * 2 + 1] = visible ? static_cast<int32_t>(ry) : 0;
            if (n_bases > 0) {
                float* col = colors_out + i * 3;
                if (!visible) {
                    col[0] = col[1] = col[2] = 0.f;
                    continue;
                }
                const float* k = coeffs + v * coeffs_vs + n * coeffs_k * 3;
                float dx = m[0] - cam.campos[0], dy = m[1] - cam.campos[1], dz = m[2] - cam.campos[2];
                const float len = std::sqrt(dx * dx + dy * dy + dz * dz);
                sh_basis(sh_degree, dx / len, dy / len, dz / len, basis);
                for (int ch = 0; ch < 3; ++ch) {
                    float acc = 0.f;
                    for (int kk = 0; kk < n_bases; ++kk) acc += basis[kk] * k[kk * 3 + ch];
                    col[ch] = std::max(acc + 0.5f, 0.f);
                }
            }
        }
    });

    // per-tile counts: one task per (view, band of tile rows), each counting only into its own tiles
    const int64_t n_tiles = C * tiles_per_view;
    std::fill(tile_offsets, tile_offsets + n_tiles + 1, 0);
    const int bands = band_count(grid, threads);
    parallel_for(C * bands, 1, threads, [&](int64_t b, int64_t e) {
        for (int64_t task = b; task < e; ++task) {
            const int64_t v = task / bands;
            int band_lo, band_hi;
            band_rows(grid, bands, int(task % bands), band_lo, band_hi);
            int64_t* row = tile_offsets + 1 + v * tiles_per_view;
            for (int64_t i = v * N; i < (v + 1) * N; ++i) {
                if (radii[i * 2] == 0 && radii[i * 2 + 1] == 0) continue;
                int x0, x1, y0, y1;
                tile_rect(means2d[i * 2], means2d[i * 2 + 1], float(radii[i * 2]), float(radii[i * 2 + 1]), grid, x0,
                          x1, y0, y1);
                for (int y = std::max(y0, band_lo); y < std::min(y1, band_hi); ++y)
                    for (int x = x0; x < x1; ++x) row[int64_t(y) * grid.tiles_x + x] += 1;
            }
        }
    });
    for (int64_t t = 0; t < n_tiles; ++t) tile_offsets[t + 1] += tile_offsets[t];
    return tile_offsets[n_tiles];
}

// Fill every tile's list with its Gaussians, front to back: the visible Gaussians are sorted once by (depth, flat
// index) with a stable radix sort and dealt to their tiles in that order, so each list comes out sorted.
void gft_bin_fill(int64_t C, int64_t N, const float* means2d, const int32_t* radii, const float* depths, int width,
                  int height, const int64_t* tile_offsets, int32_t* ids, int threads) {
    const TileGrid grid{width, height, (width + TILE - 1) / TILE, (height + TILE - 1) / TILE};
    const int64_t tiles_per_view = int64_t(grid.tiles_x) * grid.tiles_y;
    const int64_t n_tiles = C * tiles_per_view;
    std::vector<uint32_t> keys, keys_tmp;
    std::vector<int32_t> order, order_tmp;
    for (int64_t i = 0; i < C * N; ++i) {
        if (radii[i * 2] == 0 && radii[i * 2 + 1] == 0) continue;
        keys.push_back(float_key(depths[i]));
        order.push_back(static_cast<int32_t>(i));
    }
    const size_t V = keys.size();
    keys_tmp.resize(V);
    order_tmp.resize(V);
    for (int shift = 0; shift < 32; shift += 8) {  // LSD radix sort, 4 stable passes of 8 bits
        size_t count[257] = {0};
        for (size_t i = 0; i < V; ++i) ++count[((keys[i] >> shift) & 0xffu) + 1];
        for (int b = 0; b < 256; ++b) count[b + 1] += count[b];
        for (size_t i = 0; i < V; ++i) {
            const size_t dst = count[(keys[i] >> shift) & 0xffu]++;
            keys_tmp[dst] = keys[i];
            order_tmp[dst] = order[i];
        }
        keys.swap(keys_tmp);
        order.swap(order_tmp);
    }
    // group the sorted Gaussians by view (a stable partition keeps each view's depth order)
    std::vector<size_t> view_start(C + 1, 0);
    for (size_t j = 0; j < V; ++j) ++view_start[order[j] / N + 1];
    for (int64_t v = 0; v < C; ++v) view_start[v + 1] += view_start[v];
    {
        std::vector<size_t> put(view_start.begin(), view_start.end() - 1);
        for (size_t j = 0; j < V; ++j) order_tmp[put[order[j] / N]++] = order[j];
        order.swap(order_tmp);
    }
    // deal them to their tiles: one task per (view, band of tile rows), each writing only its own tiles' lists
    std::vector<int64_t> cursor(tile_offsets, tile_offsets + n_tiles);
    const int bands = band_count(grid, threads);
    parallel_for(C * bands, 1, threads, [&](int64_t b, int64_t e) {
        for (int64_t task = b; task < e; ++task) {
            const int64_t v = task / bands;
            int band_lo, band_hi;
            band_rows(grid, bands, int(task % bands), band_lo, band_hi);
            int64_t* row = cursor.data() + v * tiles_per_view;
            for (size_t j = view_start[v]; j < view_start[v + 1]; ++j) {
                const int64_t i = order[j];
                int x0, x1, y0, y1;
                tile_rect(means2d[i * 2], means2d[i * 2 + 1], float(radii[i * 2]), float(radii[i * 2 + 1]), grid, x0,
                          x1, y0, y1);
                for (int y = std::max(y0, band_lo); y < std::min(y1, band_hi); ++y)
                    for (int x = x0; x < x1; ++x) ids[row[int64_t(y) * grid.tiles_x + x]++] = static_cast<int32_t>(i);
            }
        }
    });
}

}  // extern "C"

namespace {

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"  // the vector helpers below are internal and inlined: no ABI is crossed
#endif

// 8 pixels of a tile row as one vector (GCC / clang vector extensions: AVX2 in the avx2 clone, else SSE or NEON
// pairs), placed over the part of the row that a Gaussian's chord covers.
constexpr int LANES = 8;
typedef float vf __attribute__((vector_size(32)));
typedef int32_t vi __attribute__((vector_size(32)));

inline vf vload(const float* p) {
    vf v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}
inline vi vload(const int32_t* p) {
    vi v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}
inline void vstore(float* p, vf v) { std::memcpy(p, &v, sizeof(v)); }
inline void vstore(int32_t* p, vi v) { std::memcpy(p, &v, sizeof(v)); }
inline vf vsplat(float x) { return vf{} + x; }
inline vf vsel(vi mask, vf a, vf b) { return (vf)((mask & (vi)a) | (~mask & (vi)b)); }
inline vi vsel(vi mask, vi a, vi b) { return (mask & a) | (~mask & b); }
inline vf vmin(vf a, vf b) { return vsel(b < a, b, a); }  // std::min(a, b) lane by lane
inline vf vmax(vf a, vf b) { return vsel(a < b, b, a); }  // std::max(a, b) lane by lane
inline bool vany(vi m) {
    uint64_t w[4];
    std::memcpy(w, &m, sizeof(w));
    return (w[0] | w[1] | w[2] | w[3]) != 0;
}
inline float vsum(vf v) {
    float s = 0.f;
    for (int i = 0; i < LANES; ++i) s += v[i];
    return s;
}
const vi LANE = {0, 1, 2, 3, 4, 5, 6, 7};

// exp(x) in float32 from basic arithmetic only (Cephes' range reduction and polynomial, about 1 ulp): vectorises,
// and evaluates bitwise the same in the forward and the backward. x is clamped to [-32, 88], as the reference clamps
// sigma at 32: every alpha below exp(-32) is under the 1/255 cut-off anyway, and the products of such alphas with
// transmittances stay far from float32 denormals, whose arithmetic is ~100x slower on x86.
inline vf vexp(vf x) {
    x = vmax(vmin(x, vsplat(88.f)), vsplat(-32.f));
    const float shifter = 12582912.f;  // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer
    const vf n = (x * 1.44269504088896341f + shifter) - shifter;
    vf r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    vf p = vsplat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const vf y = p * (r * r) + r + 1.f;
    const vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
    return y * (vf)bits;
}

inline vf row_sigma(const Splat& sp, vf dx, float dy) {
    return 0.5f * (sp.a * dx * dx + sp.c * dy * dy) + sp.b * dx * dy;
}

// Per-Gaussian records for the compositing loops, one 64-byte-aligned block per (view, Gaussian) so that a tile's
// list, which visits Gaussians in depth order (random in memory), touches one cache line per entry, not five:
// [mx, my, a, b, c, opacity, ln(255 opacity), rx, ry, 1 / a, b^2 - a c, 2 a ln(255 opacity) (1 + 1e-3), colour (D)].
constexpr int REC_HEAD = 12;
inline int record_stride(int D) { return (REC_HEAD + D + 15) / 16 * 16; }

struct Records {
    std::vector<float> storage;
    float* data;
    int stride;
};

void build_records(Records& R, int64_t C, int64_t N, int D, const float* means2d, const float* conics,
                   const int32_t* radii, const float* opac, int64_t opac_vs, const float* colors, int64_t colors_vs,
                   int threads) {
    R.stride = record_stride(D);
    R.storage.resize(size_t(C * N) * R.stride + 16);
    const uintptr_t base = reinterpret_cast<uintptr_t>(R.storage.data());
    R.data = R.storage.data() + ((64 - base % 64) % 64) / sizeof(float);
    parallel_for(C * N, 4096, threads, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
            if (radii[i * 2] == 0 && radii[i * 2 + 1] == 0) continue;  // never listed in a tile
            const int64_t v = i / N, n = i % N;
            float* r = R.data + i * R.stride;
            const float o = opac[v * opac_vs + n];
            r[0] = means2d[i * 2];
            r[1] = means2d[i * 2 + 1];
            r[2] = conics[i * 3];
            r[3] = conics[i * 3 + 1];
            r[4] = conics[i * 3 + 2];
            r[5] = o;
            r[6] = std::log(o * 255.f);
            r[7] = float(radii[i * 2]);
            r[8] = float(radii[i * 2 + 1]);
            r[9] = 1.f / r[2];
            r[10] = r[3] * r[3] - r[2] * r[4];
            r[11] = 2.f * r[2] * r[6] * (1.f + 1e-3f);
            std::memcpy(r + REC_HEAD, colors + v * colors_vs + n * D, sizeof(float) * D);
        }
    });
}

inline Splat record_splat(const float* r, int ox, int oy, int w, int h) {
    Splat s;
    s.mx = r[0], s.my = r[1], s.a = r[2], s.b = r[3], s.c = r[4], s.o = r[5], s.cut = r[6];
    s.inv_a = r[9], s.q = r[10], s.reach = r[11];
    pixel_span(s.mx, r[7], ox, w, s.c0, s.c1);
    pixel_span(s.my, r[8], oy, h, s.r0, s.r1);
    return s;
}

struct TileJob {
    int64_t N, v, s, e;
    int D, ox, oy, w, h, width, height;
};

inline TileJob tile_job(int64_t tile, int64_t N, int D, const TileGrid& grid, const int64_t* tile_offsets) {
    const int64_t tiles_per_view = int64_t(grid.tiles_x) * grid.tiles_y;
    TileJob j;
    j.N = N;
    j.D = D;
    j.v = tile / tiles_per_view;
    const int64_t t = tile % tiles_per_view;
    j.ox = int(t % grid.tiles_x) * TILE;
    j.oy = int(t / grid.tiles_x) * TILE;
    j.w = std::min(TILE, grid.width - j.ox);
    j.h = std::min(TILE, grid.height - j.oy);
    j.width = grid.width;
    j.height = grid.height;
    j.s = tile_offsets[tile];
    j.e = tile_offsets[tile + 1];
    return j;
}

constexpr int PREFETCH = 4;  // list entries ahead whose records are prefetched

#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define GFT_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define GFT_CLONES
#endif

// One tile of the forward. For each Gaussian (front to back) and each row its chord reaches, 8 pixels at a time are
// updated independently under masks (stopped, outside the chord, below the cut-off).
GFT_CLONES void composite_forward_tile(const TileJob& J, const Records& R, const int32_t* ids, const float* bg,
                                       float* acc, float* out_color, float* out_alpha, float* out_trans,
                                       int32_t* out_ncontrib) {
    const int D = J.D;
    alignas(64) float T[TILE_PIX];
    alignas(64) int32_t nc[TILE_PIX];
    alignas(64) int32_t done[TILE_PIX];
    int row_done[TILE];
    const vf px0 = __builtin_convertvector(LANE + J.ox, vf) + 0.5f;  // centres of a row's first 8 pixels
    std::fill(acc, acc + size_t(TILE_PIX) * D, 0.f);
    std::fill(T, T + TILE_PIX, 1.f);
    std::fill(nc, nc + TILE_PIX, 0);
    std::fill(done, done + TILE_PIX, 0);
    std::fill(row_done, row_done + TILE, 0);
    int active = J.w * J.h;
    for (int64_t k = J.s; k < J.e && active > 0; ++k) {
        if (k + PREFETCH < J.e) __builtin_prefetch(R.data + int64_t(ids[k + PREFETCH]) * R.stride);
        const float* rec = R.data + int64_t(ids[k]) * R.stride;
        const Splat sp = record_splat(rec, J.ox, J.oy, J.w, J.h);
        const float* col = rec + REC_HEAD;
        const int32_t pos = int32_t(k - J.s) + 1;
        const float o = sp.o;
        for (int r = sp.r0; r <= sp.r1; ++r) {
            if (row_done[r] == J.w) continue;
            const float dy = sp.my - (float(J.oy + r) + 0.5f);
            int c0, c1;
            if (!row_chord(sp, dy, J.ox, c0, c1)) continue;
            // 8-lane windows over the chord: each starts at the first pixel not yet done (moved left so that it
            // stays inside the row) and is masked to the chord's remaining pixels
            for (int lo = c0, start; lo <= c1; lo = start + LANES) {
                start = std::min(lo, TILE - LANES);
                const int base = r * TILE + start;
                const vf dx = sp.mx - (px0 + float(start));
                const vf alpha = vmin(vsplat(ALPHA_MAX), o * vexp(-row_sigma(sp, dx, dy)));
                const vf Tv = vload(T + base);
                const vi dnv = vload(done + base);
                const vi lane_id = LANE + start;
                const vi lane = (lane_id >= lo) & (lane_id <= c1) & (dnv == 0) & (alpha >= ALPHA_MIN);
                const vf next = Tv * (1.f - alpha);
                const vi stop = lane & (next <= T_MIN);
                const vi draw = lane & ~stop;
                const vf wgt = vsel(draw, alpha * Tv, vf{});
                vstore(T + base, vsel(draw, next, Tv));
                vstore(nc + base, vsel(draw, vi{} + pos, vload(nc + base)));
                for (int d = 0; d < D; ++d) {
                    float* a = acc + size_t(d) * TILE_PIX + base;
                    vstore(a, vload(a) + wgt * col[d]);
                }
                if (vany(stop)) {  // rare: once per pixel at most
                    vstore(done + base, dnv | stop);
                    int stops = 0;
                    for (int c = 0; c < LANES; ++c) stops -= stop[c];
                    row_done[r] += stops;
                    active -= stops;
                }
            }
        }
    }
    for (int r = 0; r < J.h; ++r) {
        const int64_t row = (J.v * J.height + J.oy + r) * int64_t(J.width) + J.ox;
        for (int c = 0; c < J.w; ++c) {
            const int p = r * TILE + c;
            out_trans[row + c] = T[p];
            out_alpha[row + c] = 1.f - T[p];
            out_ncontrib[row + c] = nc[p];
            float* o = out_color + (row + c) * D;
            for (int d = 0; d < D; ++d) o[d] = acc[size_t(d) * TILE_PIX + p] + T[p] * bg[d];
        }
    }
}

// One tile of the backward: Gaussians back to front, the transmittance in front of each recovered by division, the
// colour-gradient-weighted colour behind carried per pixel (S); per-lane gradient sums, reduced once per Gaussian.
GFT_CLONES void composite_backward_tile(const TileJob& J, const Records& R, const int32_t* ids, const float* bg,
                                        const float* trans, const int32_t* ncontrib, const float* grad_color,
                                        const float* grad_alpha, float* gpix, float* lanes, float* pair_grad,
                                        float* gbg) {
    const int D = J.D;
    const int stride = 6 + D;
    alignas(64) float T[TILE_PIX];
    alignas(64) float S[TILE_PIX];
    alignas(64) int32_t nc[TILE_PIX];
    int row_max[TILE];
    const vf px0 = __builtin_convertvector(LANE + J.ox, vf) + 0.5f;
    std::fill(T, T + TILE_PIX, 1.f);
    std::fill(S, S + TILE_PIX, 0.f);
    std::fill(nc, nc + TILE_PIX, 0);
    std::fill(gpix, gpix + size_t(TILE_PIX) * D, 0.f);
    std::fill(row_max, row_max + TILE, 0);
    int32_t last = 0;
    for (int r = 0; r < J.h; ++r) {
        const int64_t row = (J.v * J.height + J.oy + r) * int64_t(J.width) + J.ox;
        for (int c = 0; c < J.w; ++c) {
            const int p = r * TILE + c;
            T[p] = trans[row + c];
            const float* gi = grad_color + (row + c) * D;
            float g_t = -grad_alpha[row + c];  // dL/dT_final: alpha = 1 - T, image = colour + T bg
            for (int d = 0; d < D; ++d) {
                g_t += gi[d] * bg[d];
                gbg[d] += gi[d] * T[p];
                gpix[size_t(d) * TILE_PIX + p] = gi[d];
            }
            S[p] = g_t * T[p];
            nc[p] = ncontrib[row + c];
            row_max[r] = std::max(row_max[r], nc[p]);
        }
        last = std::max(last, row_max[r]);
    }
    if (J.e == J.s) return;
    std::fill(pair_grad + (J.s + last) * stride, pair_grad + J.e * stride, 0.f);
    for (int64_t k = J.s + last - 1; k >= J.s; --k) {
        if (k - PREFETCH >= J.s) __builtin_prefetch(R.data + int64_t(ids[k - PREFETCH]) * R.stride);
        const float* rec = R.data + int64_t(ids[k]) * R.stride;
        const Splat sp = record_splat(rec, J.ox, J.oy, J.w, J.h);
        const float* col = rec + REC_HEAD;
        const float ca = sp.a, cb = sp.b, cc = sp.c, o = sp.o;
        const int32_t pos = int32_t(k - J.s);
        std::fill(lanes, lanes + size_t(D) * LANES, 0.f);
        vf l_mx{}, l_my{}, l_a{}, l_b{}, l_c{}, l_o{};  // per-lane sums: means2d x, y, conic a, b, c, opacity
        bool any = false;
        for (int r = sp.r0; r <= sp.r1; ++r) {
            if (pos >= row_max[r]) continue;
            const float dy = sp.my - (float(J.oy + r) + 0.5f);
            int c0, c1;
            if (!row_chord(sp, dy, J.ox, c0, c1)) continue;
            any = true;
            // 8-lane windows over the chord: each starts at the first pixel not yet done (moved left so that it
            // stays inside the row) and is masked to the chord's remaining pixels
            for (int lo = c0, start; lo <= c1; lo = start + LANES) {
                start = std::min(lo, TILE - LANES);
                const int base = r * TILE + start;
                vf dot{};
                for (int d = 0; d < D; ++d) dot += vload(gpix + size_t(d) * TILE_PIX + base) * col[d];
                const vf dx = sp.mx - (px0 + float(start));
                const vf G = vexp(-row_sigma(sp, dx, dy));
                const vf raw = o * G;
                const vf alpha = vmin(vsplat(ALPHA_MAX), raw);
                const vi lane_id = LANE + start;
                const vi lane = (lane_id >= lo) & (lane_id <= c1) & (vload(nc + base) > pos) & (alpha >= ALPHA_MIN);
                const vf one_minus = 1.f - alpha;
                const vf Tv = vload(T + base), Sv = vload(S + base);
                const vf front = Tv / one_minus;
                const vf wgt = alpha * front;
                const vf galpha = front * dot - Sv / one_minus;
                vstore(S + base, vsel(lane, Sv + wgt * dot, Sv));
                vstore(T + base, vsel(lane, front, Tv));
                const vf wl = vsel(lane, wgt, vf{});
                const vf ga = vsel(lane & (raw < ALPHA_MAX), galpha, vf{});  // clamped alphas pass no gradient
                const vf gs = -alpha * ga;  // dL/dsigma
                l_o += G * ga;
                l_mx += gs * (ca * dx + cb * dy);
                l_my += gs * (cb * dx + cc * dy);
                l_a += gs * 0.5f * dx * dx;
                l_b += gs * dx * dy;
                l_c += gs * 0.5f * dy * dy;
                for (int d = 0; d < D; ++d) {
                    float* ld = lanes + size_t(d) * LANES;
                    vstore(ld, vload(ld) + wl * vload(gpix + size_t(d) * TILE_PIX + base));
                }
            }
        }
        float* out = pair_grad + k * stride;
        if (!any) {
            std::fill(out, out + stride, 0.f);
            continue;
        }
        out[0] = vsum(l_mx);
        out[1] = vsum(l_my);
        out[2] = vsum(l_a);
        out[3] = vsum(l_b);
        out[4] = vsum(l_c);
        out[5] = vsum(l_o);
        for (int d = 0; d < D; ++d) out[6 + d] = vsum(vload(lanes + size_t(d) * LANES));
    }
}

}  // namespace

extern "C" {

// Front-to-back compositing of the binned Gaussians over backgrounds (C, D): writes the image (C, H, W, D), alpha
// (C, H, W) = 1 - final transmittance, the final transmittance itself and n_contrib (both kept for the backward).
void gft_composite_forward(int64_t C, int64_t N, int D, const float* means2d, const float* conics, const int32_t* radii,
                           const float* opac, int64_t opac_vs, const float* colors, int64_t colors_vs,
                           const float* backgrounds, int width, int height, const int64_t* tile_offsets,
                           const int32_t* ids, float* out_color, float* out_alpha, float* out_trans,
                           int32_t* out_ncontrib, int threads) {
    const TileGrid grid{width, height, (width + TILE - 1) / TILE, (height + TILE - 1) / TILE};
    Records R;
    build_records(R, C, N, D, means2d, conics, radii, opac, opac_vs, colors, colors_vs, threads);
    const int64_t n_tiles = C * int64_t(grid.tiles_x) * grid.tiles_y;
    parallel_for(n_tiles, 1, threads, [&](int64_t begin, int64_t end) {
        std::vector<float> acc(size_t(TILE_PIX) * D);
        for (int64_t tile = begin; tile < end; ++tile) {
            const TileJob J = tile_job(tile, N, D, grid, tile_offsets);
            composite_forward_tile(J, R, ids, backgrounds + J.v * D, acc.data(), out_color, out_alpha, out_trans,
                                   out_ncontrib);
        }
    });
}

// Backward of gft_composite_forward: given dL/d image (C, H, W, D) and dL/d alpha (C, H, W), writes dL/d means2d
// (C, N, 2), conics (C, N, 3), opacities (C, N), colours (C, N, D) and backgrounds (C, D) (overwritten, full per view).
void gft_composite_backward(int64_t C, int64_t N, int D, const float* means2d, const float* conics,
                            const int32_t* radii, const float* opac, int64_t opac_vs, const float* colors,
                            int64_t colors_vs, const float* backgrounds, int width, int height,
                            const int64_t* tile_offsets, const int32_t* ids, const float* trans,
                            const int32_t* ncontrib, const float* grad_color, const float* grad_alpha,
                            float* g_means2d, float* g_conics, float* g_opac, float* g_colors, float* g_background,
                            int threads) {
    const TileGrid grid{width, height, (width + TILE - 1) / TILE, (height + TILE - 1) / TILE};
    Records R;
    build_records(R, C, N, D, means2d, conics, radii, opac, opac_vs, colors, colors_vs, threads);
    const int64_t tiles_per_view = int64_t(grid.tiles_x) * grid.tiles_y;
    const int64_t n_tiles = C * tiles_per_view;
    const int64_t P = tile_offsets[n_tiles];
    const int stride = 6 + D;  // per pair: means2d (2), conic (3), opacity (1), colour (D)
    std::vector<float> pair_grad(size_t(P) * stride);
    std::vector<float> tile_bg(size_t(n_tiles) * D, 0.f);  // per tile: sum over pixels of dL/d image * T_final

    parallel_for(n_tiles, 1, threads, [&](int64_t begin, int64_t end) {
        std::vector<float> gpix(size_t(TILE_PIX) * D), lanes(size_t(D) * LANES);
        for (int64_t tile = begin; tile < end; ++tile) {
            const TileJob J = tile_job(tile, N, D, grid, tile_offsets);
            composite_backward_tile(J, R, ids, backgrounds + J.v * D, trans, ncontrib, grad_color, grad_alpha,
                                    gpix.data(), lanes.data(), pair_grad.data(), tile_bg.data() + tile * D);
        }
    });

    for (int64_t v = 0; v < C; ++v)
        for (int d = 0; d < D; ++d) {
            float sum = 0.f;
            for (int64_t t = 0; t < tiles_per_view; ++t) sum += tile_bg[(v * tiles_per_view + t) * D + d];
            g_background[v * D + d] = sum;
        }
    std::memset(g_means2d, 0, sizeof(float) * C * N * 2);
    std::memset(g_conics, 0, sizeof(float) * C * N * 3);
    std::memset(g_opac, 0, sizeof(float) * C * N);
    std::memset(g_colors, 0, sizeof(float) * C * N * D);
    // every pair belongs to one Gaussian: reduce per view in parallel (a view's Gaussians are its own)
    parallel_for(C, 1, threads, [&](int64_t vb, int64_t ve) {
        for (int64_t k = tile_offsets[vb * tiles_per_view]; k < tile_offsets[ve * tiles_per_view]; ++k) {
            const int64_t g = ids[k];
            const float* in = pair_grad.data() + size_t(k) * stride;
            g_means2d[g * 2] += in[0];
            g_means2d[g * 2 + 1] += in[1];
            g_conics[g * 3] += in[2];
            g_conics[g * 3 + 1] += in[3];
            g_conics[g * 3 + 2] += in[4];
            g_opac[g] += in[5];
            float* gc = g_colors + g * D;
            for (int d = 0; d < D; ++d) gc[d] += in[6 + d];
        }
    });
}

// Backward of gft_project_forward for the visible Gaussians: from dL/d means2d, conics (and SH colours), writes
// dL/d means (C, N, 3), quats (C, N, 4), scales (C, N, 3) and SH coefficients (C, N, coeffs_k, 3) (overwritten,
// full per view; zero for culled Gaussians and for unused SH coefficients).
void gft_project_backward(int64_t C, int64_t N, const float* means, int64_t means_vs, const float* quats,
                          int64_t quats_vs, const float* scales, int64_t scales_vs, const float* coeffs,
                          int64_t coeffs_vs, int64_t coeffs_k, int sh_degree, const float* viewmats, const float* Ks,
                          int width, int height, float eps2d, const int32_t* radii, const float* colors_out,
                          const float* g_means2d, const float* g_conics, const float* g_colors, float* g_means,
                          float* g_quats, float* g_scales, float* g_coeffs, int threads) {
    std::vector<Camera> cams(C);
    for (int64_t v = 0; v < C; ++v) cams[v] = load_camera(viewmats, Ks, v);
    const int n_bases = sh_degree >= 0 ? (sh_degree + 1) * (sh_degree + 1) : 0;

    parallel_for(C * N, 1024, threads, [&](int64_t begin, int64_t end) {
        float basis[16], wsum[16];
        for (int64_t i = begin, v = begin / N, n = begin % N; i < end; ++i, n = (n + 1 == N) ? (++v, 0) : n + 1) {
            // v, n: view and Gaussian of the flat index i (kept incrementally: no 64-bit divisions per Gaussian)
            float* gm = g_means + i * 3;
            float* gq = g_quats + i * 4;
            float* gsc = g_scales + i * 3;
            float* gk = g_coeffs ? g_coeffs + i * coeffs_k * 3 : nullptr;
            gm[0] = gm[1] = gm[2] = 0.f;
            gq[0] = gq[1] = gq[2] = gq[3] = 0.f;
            gsc[0] = gsc[1] = gsc[2] = 0.f;
            if (gk) std::fill(gk, gk + coeffs_k * 3, 0.f);
            if (radii[i * 2] == 0 && radii[i * 2 + 1] == 0) continue;

            const Camera& cam = cams[v];
            const float* m = means + v * means_vs + n * 3;
            const float* q = quats + v * quats_vs + n * 4;
            const float* s = scales + v * scales_vs + n * 3;
            const float* R = cam.R;

            // SH colour -> coefficients and the viewing direction
            if (n_bases > 0) {
                const float* k = coeffs + v * coeffs_vs + n * coeffs_k * 3;
                const float* gcol = g_colors + i * 3;
                const float* col = colors_out + i * 3;
                float dx = m[0] - cam.campos[0], dy = m[1] - cam.campos[1], dz = m[2] - cam.campos[2];
                const float len = std::sqrt(dx * dx + dy * dy + dz * dz);
                const float ux = dx / len, uy = dy / len, uz = dz / len;
                sh_basis(sh_degree, ux, uy, uz, basis);
                float gc[3];
                // max(raw + 0.5, 0) passes the gradient where raw + 0.5 >= 0; col == 0 can also mean raw + 0.5 == 0
                for (int ch = 0; ch < 3; ++ch) {
                    float acc = 0.f;
                    for (int kk = 0; kk < n_bases; ++kk) acc += basis[kk] * k[kk * 3 + ch];
                    gc[ch] = (acc + 0.5f >= 0.f) ? gcol[ch] : 0.f;
                }
                (void)col;
                for (int kk = 0; kk < n_bases; ++kk) {
                    for (int ch = 0; ch < 3; ++ch) gk[kk * 3 + ch] = basis[kk] * gc[ch];
                    wsum[kk] = k[kk * 3] * gc[0] + k[kk * 3 + 1] * gc[1] + k[kk * 3 + 2] * gc[2];
                }
                if (sh_degree > 0) {
                    float gu[3] = {0.f, 0.f, 0.f};
                    sh_basis_vjp(sh_degree, ux, uy, uz, wsum, gu);
                    const float dotu = gu[0] * ux + gu[1] * uy + gu[2] * uz;
                    gm[0] += (gu[0] - ux * dotu) / len;
                    gm[1] += (gu[1] - uy * dotu) / len;
                    gm[2] += (gu[2] - uz * dotu) / len;
                }
            }

            // recompute the forward
            float p[3];
            for (int r = 0; r < 3; ++r) p[r] = R[r * 3] * m[0] + R[r * 3 + 1] * m[1] + R[r * 3 + 2] * m[2] + cam.t[r];
            const float z = p[2];  // visible implies in depth
            const float xz = p[0] / z, yz = p[1] / z;
            const float mgx = JACOBIAN_MARGIN * width / cam.fx, mgy = JACOBIAN_MARGIN * height / cam.fy;
            const float lox = -(cam.cx / cam.fx + mgx), hix = (width - cam.cx) / cam.fx + mgx;
            const float loy = -(cam.cy / cam.fy + mgy), hiy = (height - cam.cy) / cam.fy + mgy;
            const float jx = std::min(std::max(xz, lox), hix), jy = std::min(std::max(yz, loy), hiy);
            const float j00 = cam.fx / z, j02 = -cam.fx * jx / z, j11 = cam.fy / z, j12 = -cam.fy * jy / z;
            float T[6];
            for (int c = 0; c < 3; ++c) {
                T[c] = j00 * R[c] + j02 * R[6 + c];
                T[3 + c] = j11 * R[3 + c] + j12 * R[6 + c];
            }
            float Rq[9], qn[4];
            const float qnorm = quat_to_rot(q, Rq, qn);
            float A[6], M[6];  // A = T Rq, M = A S
            for (int r = 0; r < 2; ++r)
                for (int c = 0; c < 3; ++c) {
                    A[r * 3 + c] = T[r * 3] * Rq[c] + T[r * 3 + 1] * Rq[3 + c] + T[r * 3 + 2] * Rq[6 + c];
                    M[r * 3 + c] = A[r * 3 + c] * s[c];
                }
            const float a = M[0] * M[0] + M[1] * M[1] + M[2] * M[2] + eps2d;
            const float b = M[0] * M[3] + M[1] * M[4] + M[2] * M[5];
            const float cc = M[3] * M[3] + M[4] * M[4] + M[5] * M[5] + eps2d;
            const float det = a * cc - b * b;
            const float qa = cc / det, qb = -b / det, qc = a / det;  // conic Q

            // conic -> covariance: dL/dSigma = -Q G Q with G = [[gA, gB/2], [gB/2, gC]]
            const float gA = g_conics[i * 3], gB = 0.5f * g_conics[i * 3 + 1], gC = g_conics[i * 3 + 2];
            const float t00 = qa * gA + qb * gB, t01 = qa * gB + qb * gC;  // Q G (row 0)
            const float t10 = qb * gA + qc * gB, t11 = qb * gB + qc * gC;  // Q G (row 1)
            const float s00 = -(t00 * qa + t01 * qb), s01 = -(t00 * qb + t01 * qc), s11 = -(t10 * qb + t11 * qc);
            // Sigma2d = M M^T: dL/dM = 2 Gs M with Gs = [[s00, s01], [s01, s11]]
            float gM[6];
            for (int c = 0; c < 3; ++c) {
                gM[c] = 2.f * (s00 * M[c] + s01 * M[3 + c]);
                gM[3 + c] = 2.f * (s01 * M[c] + s11 * M[3 + c]);
            }
            // M = A S: dL/ds_c = sum_r gM[r][c] A[r][c]; dL/dA = gM S
            float gA6[6];
            for (int c = 0; c < 3; ++c) {
                gsc[c] = gM[c] * A[c] + gM[3 + c] * A[3 + c];
                gA6[c] = gM[c] * s[c];
                gA6[3 + c] = gM[3 + c] * s[c];
            }
            // A = T Rq: dL/dRq = T^T gA, dL/dT = gA Rq^T
            float gR[9], gT[6];
            for (int r = 0; r < 3; ++r)
                for (int c = 0; c < 3; ++c) gR[r * 3 + c] = T[r] * gA6[c] + T[3 + r] * gA6[3 + c];
            for (int r = 0; r < 2; ++r)
                for (int c = 0; c < 3; ++c)
                    gT[r * 3 + c] = gA6[r * 3] * Rq[c * 3] + gA6[r * 3 + 1] * Rq[c * 3 + 1] + gA6[r * 3 + 2] * Rq[c * 3 + 2];
            // rotation -> normalised quaternion -> quaternion
            {
                const float w = qn[0], x = qn[1], y = qn[2], zq = qn[3];
                float gqn[4];
                gqn[0] = 2.f * (-zq * gR[1] + y * gR[2] + zq * gR[3] - x * gR[5] - y * gR[6] + x * gR[7]);
                gqn[1] = 2.f * (y * gR[1] + zq * gR[2] + y * gR[3] - 2.f * x * gR[4] - w * gR[5] + zq * gR[6] +
                                w * gR[7] - 2.f * x * gR[8]);
                gqn[2] = 2.f * (-2.f * y * gR[0] + x * gR[1] + w * gR[2] + x * gR[3] + zq * gR[5] - w * gR[6] +
                                zq * gR[7] - 2.f * y * gR[8]);
                gqn[3] = 2.f * (-2.f * zq * gR[0] - w * gR[1] + x * gR[2] + w * gR[3] - 2.f * zq * gR[4] + y * gR[5] +
                                x * gR[6] + y * gR[7]);
                const float dq = gqn[0] * w + gqn[1] * x + gqn[2] * y + gqn[3] * zq;
                for (int j = 0; j < 4; ++j) gq[j] = (gqn[j] - qn[j] * dq) / qnorm;
            }
            // T = J W: dL/dJ = gT W^T (only the four non-zero entries of J matter)
            float gJ[6];
            for (int r = 0; r < 2; ++r)
                for (int c = 0; c < 3; ++c)
                    gJ[r * 3 + c] = gT[r * 3] * R[c * 3] + gT[r * 3 + 1] * R[c * 3 + 1] + gT[r * 3 + 2] * R[c * 3 + 2];
            const float gj00 = gJ[0], gj02 = gJ[2], gj11 = gJ[4], gj12 = gJ[5];
            float gz = -cam.fx / (z * z) * gj00 + cam.fx * jx / (z * z) * gj02 - cam.fy / (z * z) * gj11 +
                       cam.fy * jy / (z * z) * gj12;
            float gxz = cam.fx * g_means2d[i * 2], gyz = cam.fy * g_means2d[i * 2 + 1];
            if (xz >= lox && xz <= hix) gxz += -cam.fx / z * gj02;
            if (yz >= loy && yz <= hiy) gyz += -cam.fy / z * gj12;
            float gp[3] = {gxz / z, gyz / z, gz - (gxz * xz + gyz * yz) / z};
            // p = W m + t: dL/dm = W^T dL/dp
            for (int c = 0; c < 3; ++c) gm[c] += R[c] * gp[0] + R[3 + c] * gp[1] + R[6 + c] * gp[2];
        }
    });
}

}  // extern "C"
