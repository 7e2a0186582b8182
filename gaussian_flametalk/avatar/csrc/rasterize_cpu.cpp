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

// Run fn(begin, end) over [0, n) in chunks of `grain`, on up to `threads` threads (the caller's included).
template <class F>
void parallel_for(int64_t n, int64_t grain, int threads, F fn) {
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    const int64_t n_chunks = (n + grain - 1) / grain;
    int workers = static_cast<int>(std::min<int64_t>(std::max(threads, 1), n_chunks));
    if (workers <= 1) {
        fn(int64_t(0), n);
        return;
    }
    std::atomic<int64_t> next(0);
    auto work = [&]() {
        for (;;) {
            const int64_t chunk = next.fetch_add(1, std::memory_order_relaxed);
            if (chunk >= n_chunks) break;
            const int64_t b = chunk * grain;
            fn(b, std::min(n, b + grain));
        }
    };
    std::vector<std::thread> pool;
    pool.reserve(workers - 1);
    for (int i = 0; i < workers - 1; ++i) pool.emplace_back(work);
    work();
    for (auto& t : pool) t.join();
}

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

// Sortable 32-bit key of a float (monotone for every finite value).
inline uint32_t float_key(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

}  // namespace

extern "C" {

int gft_abi_version() { return 1; }

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
        for (int64_t i = begin; i < end; ++i) {
            const int64_t v = i / N, n = i % N;
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
            const float rx = std::ceil(extent * std::sqrt(a)), ry = std::ceil(extent * std::sqrt(cc));
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

    // per-tile counts (serial: one pass over the visible Gaussians' rectangles)
    const int64_t n_tiles = C * tiles_per_view;
    std::fill(tile_offsets, tile_offsets + n_tiles + 1, 0);
    for (int64_t i = 0; i < C * N; ++i) {
        if (radii[i * 2] == 0 && radii[i * 2 + 1] == 0) continue;
        int x0, x1, y0, y1;
        tile_rect(means2d[i * 2], means2d[i * 2 + 1], float(radii[i * 2]), float(radii[i * 2 + 1]), grid, x0, x1, y0, y1);
        int64_t* row = tile_offsets + 1 + (i / N) * tiles_per_view;
        for (int y = y0; y < y1; ++y)
            for (int x = x0; x < x1; ++x) row[int64_t(y) * grid.tiles_x + x] += 1;
    }
    for (int64_t t = 0; t < n_tiles; ++t) tile_offsets[t + 1] += tile_offsets[t];
    return tile_offsets[n_tiles];
}

// Fill every tile's list with its Gaussians and sort each list front to back (depth, then Gaussian index).
void gft_bin_fill(int64_t C, int64_t N, const float* means2d, const int32_t* radii, const float* depths, int width,
                  int height, const int64_t* tile_offsets, int32_t* ids, int threads) {
    const TileGrid grid{width, height, (width + TILE - 1) / TILE, (height + TILE - 1) / TILE};
    const int64_t tiles_per_view = int64_t(grid.tiles_x) * grid.tiles_y;
    const int64_t n_tiles = C * tiles_per_view;
    std::vector<int64_t> cursor(tile_offsets, tile_offsets + n_tiles);
    for (int64_t i = 0; i < C * N; ++i) {
        if (radii[i * 2] == 0 && radii[i * 2 + 1] == 0) continue;
        int x0, x1, y0, y1;
        tile_rect(means2d[i * 2], means2d[i * 2 + 1], float(radii[i * 2]), float(radii[i * 2 + 1]), grid, x0, x1, y0, y1);
        int64_t* row = cursor.data() + (i / N) * tiles_per_view;
        for (int y = y0; y < y1; ++y)
            for (int x = x0; x < x1; ++x) ids[row[int64_t(y) * grid.tiles_x + x]++] = static_cast<int32_t>(i);
    }
    parallel_for(n_tiles, 4, threads, [&](int64_t begin, int64_t end) {
        std::vector<uint64_t> keys;
        for (int64_t t = begin; t < end; ++t) {
            const int64_t s = tile_offsets[t], e = tile_offsets[t + 1];
            if (e - s < 2) continue;
            keys.resize(e - s);
            for (int64_t k = s; k < e; ++k)
                keys[k - s] = (uint64_t(float_key(depths[ids[k]])) << 32) | uint32_t(ids[k]);
            std::sort(keys.begin(), keys.end());
            for (int64_t k = s; k < e; ++k) ids[k] = static_cast<int32_t>(keys[k - s] & 0xffffffffu);
        }
    });
}

// Front-to-back compositing of the binned Gaussians (no background).
void gft_composite_forward(int64_t C, int64_t N, int D, const float* means2d, const float* conics, const int32_t* radii,
                           const float* opac, int64_t opac_vs, const float* colors, int64_t colors_vs, int width,
                           int height, const int64_t* tile_offsets, const int32_t* ids, float* out_color,
                           float* out_trans, int32_t* out_ncontrib, int threads) {
    const TileGrid grid{width, height, (width + TILE - 1) / TILE, (height + TILE - 1) / TILE};
    const int64_t tiles_per_view = int64_t(grid.tiles_x) * grid.tiles_y;
    parallel_for(C * tiles_per_view, 1, threads, [&](int64_t begin, int64_t end) {
        std::vector<float> acc(size_t(TILE_PIX) * D);
        float T[TILE_PIX];
        int32_t nc[TILE_PIX];
        unsigned char done[TILE_PIX];
        for (int64_t tile = begin; tile < end; ++tile) {
            const int64_t v = tile / tiles_per_view, t = tile % tiles_per_view;
            const int ox = int(t % grid.tiles_x) * TILE, oy = int(t / grid.tiles_x) * TILE;
            const int w = std::min(TILE, width - ox), h = std::min(TILE, height - oy);
            std::fill(acc.begin(), acc.end(), 0.f);
            std::fill(T, T + TILE_PIX, 1.f);
            std::fill(nc, nc + TILE_PIX, 0);
            std::fill(done, done + TILE_PIX, 0);
            int active = w * h;
            const int64_t s = tile_offsets[tile], e = tile_offsets[tile + 1];
            for (int64_t k = s; k < e && active > 0; ++k) {
                const int64_t g = ids[k];
                const int64_t n = g - v * N;
                const float mx = means2d[g * 2], my = means2d[g * 2 + 1];
                const float ca = conics[g * 3], cb = conics[g * 3 + 1], cc = conics[g * 3 + 2];
                const float o = opac[v * opac_vs + n];
                const float* col = colors + v * colors_vs + n * D;
                int c0, c1, r0, r1;
                pixel_span(mx, float(radii[g * 2]), ox, w, c0, c1);
                pixel_span(my, float(radii[g * 2 + 1]), oy, h, r0, r1);
                const int32_t pos = int32_t(k - s) + 1;
                for (int r = r0; r <= r1; ++r) {
                    const float dy = my - (float(oy + r) + 0.5f);
                    for (int c = c0; c <= c1; ++c) {
                        const int p = r * TILE + c;
                        if (done[p]) continue;
                        const float dx = mx - (float(ox + c) + 0.5f);
                        const float sigma = 0.5f * (ca * dx * dx + cc * dy * dy) + cb * dx * dy;
                        const float alpha = std::min(ALPHA_MAX, o * std::exp(-sigma));
                        if (alpha < ALPHA_MIN) continue;
                        const float next = T[p] * (1.f - alpha);
                        if (next <= T_MIN) {
                            done[p] = 1;
                            --active;
                            continue;
                        }
                        const float wgt = alpha * T[p];
                        float* a = acc.data() + size_t(p) * D;
                        for (int d = 0; d < D; ++d) a[d] += wgt * col[d];
                        T[p] = next;
                        nc[p] = pos;
                    }
                }
            }
            for (int r = 0; r < h; ++r) {
                const int64_t row = (v * height + oy + r) * int64_t(width) + ox;
                for (int c = 0; c < w; ++c) {
                    const int p = r * TILE + c;
                    out_trans[row + c] = T[p];
                    out_ncontrib[row + c] = nc[p];
                    std::memcpy(out_color + (row + c) * D, acc.data() + size_t(p) * D, sizeof(float) * D);
                }
            }
        }
    });
}

// Backward of gft_composite_forward: given dL/d(colour image) (C, H, W, D) and dL/d(transmittance) (C, H, W), writes
// dL/d means2d (C, N, 2), conics (C, N, 3), opacities (C, N) and colours (C, N, D) (all overwritten, full per view).
void gft_composite_backward(int64_t C, int64_t N, int D, const float* means2d, const float* conics,
                            const int32_t* radii, const float* opac, int64_t opac_vs, const float* colors,
                            int64_t colors_vs, int width, int height, const int64_t* tile_offsets, const int32_t* ids,
                            const float* trans, const int32_t* ncontrib, const float* grad_color,
                            const float* grad_trans, float* g_means2d, float* g_conics, float* g_opac, float* g_colors,
                            int threads) {
    const TileGrid grid{width, height, (width + TILE - 1) / TILE, (height + TILE - 1) / TILE};
    const int64_t tiles_per_view = int64_t(grid.tiles_x) * grid.tiles_y;
    const int64_t n_tiles = C * tiles_per_view;
    const int64_t P = tile_offsets[n_tiles];
    const int stride = 6 + D;  // per pair: means2d (2), conic (3), opacity (1), colour (D)
    std::vector<float> pair_grad(size_t(P) * stride);

    parallel_for(n_tiles, 1, threads, [&](int64_t begin, int64_t end) {
        std::vector<float> gpix(size_t(TILE_PIX) * D), gcol(D);
        float T[TILE_PIX], S[TILE_PIX];
        int32_t nc[TILE_PIX];
        for (int64_t tile = begin; tile < end; ++tile) {
            const int64_t v = tile / tiles_per_view, t = tile % tiles_per_view;
            const int ox = int(t % grid.tiles_x) * TILE, oy = int(t / grid.tiles_x) * TILE;
            const int w = std::min(TILE, width - ox), h = std::min(TILE, height - oy);
            const int64_t s = tile_offsets[tile], e = tile_offsets[tile + 1];
            if (e == s) continue;
            int32_t last = 0;
            std::fill(nc, nc + TILE_PIX, 0);
            for (int r = 0; r < h; ++r) {
                const int64_t row = (v * height + oy + r) * int64_t(width) + ox;
                for (int c = 0; c < w; ++c) {
                    const int p = r * TILE + c;
                    T[p] = trans[row + c];
                    S[p] = grad_trans[row + c] * T[p];
                    nc[p] = ncontrib[row + c];
                    last = std::max(last, nc[p]);
                    std::memcpy(gpix.data() + size_t(p) * D, grad_color + (row + c) * D, sizeof(float) * D);
                }
            }
            std::fill(pair_grad.begin() + (s + last) * stride, pair_grad.begin() + e * stride, 0.f);
            for (int64_t k = s + last - 1; k >= s; --k) {
                const int64_t g = ids[k];
                const int64_t n = g - v * N;
                const float mx = means2d[g * 2], my = means2d[g * 2 + 1];
                const float ca = conics[g * 3], cb = conics[g * 3 + 1], cc = conics[g * 3 + 2];
                const float o = opac[v * opac_vs + n];
                const float* col = colors + v * colors_vs + n * D;
                int c0, c1, r0, r1;
                pixel_span(mx, float(radii[g * 2]), ox, w, c0, c1);
                pixel_span(my, float(radii[g * 2 + 1]), oy, h, r0, r1);
                const int32_t pos = int32_t(k - s);
                float gmx = 0.f, gmy = 0.f, ga = 0.f, gb = 0.f, gc = 0.f, go = 0.f;
                std::fill(gcol.begin(), gcol.end(), 0.f);
                for (int r = r0; r <= r1; ++r) {
                    const float dy = my - (float(oy + r) + 0.5f);
                    for (int c = c0; c <= c1; ++c) {
                        const int p = r * TILE + c;
                        if (pos >= nc[p]) continue;
                        const float dx = mx - (float(ox + c) + 0.5f);
                        const float sigma = 0.5f * (ca * dx * dx + cc * dy * dy) + cb * dx * dy;
                        const float G = std::exp(-sigma);
                        const float raw = o * G;
                        const float alpha = std::min(ALPHA_MAX, raw);
                        if (alpha < ALPHA_MIN) continue;
                        const float one_minus = 1.f - alpha;
                        const float front = T[p] / one_minus;
                        const float wgt = alpha * front;
                        const float* gp = gpix.data() + size_t(p) * D;
                        float dot = 0.f;
                        for (int d = 0; d < D; ++d) {
                            gcol[d] += wgt * gp[d];
                            dot += gp[d] * col[d];
                        }
                        const float galpha = front * dot - S[p] / one_minus;
                        S[p] += wgt * dot;
                        T[p] = front;
                        if (raw < ALPHA_MAX) {
                            go += G * galpha;
                            const float gs = -alpha * galpha;  // dL/dsigma
                            gmx += gs * (ca * dx + cb * dy);
                            gmy += gs * (cb * dx + cc * dy);
                            ga += gs * 0.5f * dx * dx;
                            gb += gs * dx * dy;
                            gc += gs * 0.5f * dy * dy;
                        }
                    }
                }
                float* out = pair_grad.data() + size_t(k) * stride;
                out[0] = gmx, out[1] = gmy, out[2] = ga, out[3] = gb, out[4] = gc, out[5] = go;
                for (int d = 0; d < D; ++d) out[6 + d] = gcol[d];
            }
        }
    });

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
        for (int64_t i = begin; i < end; ++i) {
            const int64_t v = i / N, n = i % N;
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
