// Triangle binding of gaussian-flametalk (GaussianAvatars), forward only: local Gaussian parameters + a posed mesh ->
// world means, rotations and scales, multithreaded over Gaussians. The readable specification is
// gaussian_flametalk/avatar/binding.py (triangle_frames + local_to_world), whose maths this follows line by line:
//   frame of triangle (v0, v1, v2): origin = centroid; x = unit(v1 - v0); z = unit((v1 - v0) x (v2 - v0)); y = z x x;
//   k = (|v1 - v0| + |(v1 - v0) x (v2 - v0)| / |v1 - v0|) / 2 (lengths clamped below at 1e-12);
//   mean = k R xyz + origin;  quat = q(R) * normalise(q_local);  scale = k exp(log_scale).
// q(R) takes the largest of 1 + trace-combinations (the best-conditioned formula), normalises, and makes w >= 0.
// The triangle's frame is recomputed per Gaussian (three vertex loads and two cross products), so there is no
// per-triangle pass and no temporary. Used for rendering without gradients (drive, evaluation); training, which
// differentiates through the vertices, uses the PyTorch version.
//
// Layouts (row-major): vertices (B, V, 3) float32, faces (F, 3) int64, parent (N,) int64, xyz (N, 3),
// quats (N, 4) (w, x, y, z), log_scales (N, 3); outputs means (B, N, 3), quats (B, N, 4), scales (B, N, 3).

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "parallel.h"

namespace {

constexpr float EPS = 1e-12f;

inline void cross3(const float* a, const float* b, float* out) {
    out[0] = a[1] * b[2] - a[2] * b[1];
    out[1] = a[2] * b[0] - a[0] * b[2];
    out[2] = a[0] * b[1] - a[1] * b[0];
}

inline float norm3(const float* a) { return std::sqrt(a[0] * a[0] + a[1] * a[1] + a[2] * a[2]); }

// Rotation matrix (row-major, columns = axes) -> unit quaternion (w, x, y, z) with w >= 0.
inline void matrix_to_quat(const float* m, float* q) {
    const float m00 = m[0], m11 = m[4], m22 = m[8];
    const float four[4] = {1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22};
    int best = 0;
    for (int i = 1; i < 4; ++i)
        if (four[i] > four[best]) best = i;
    const float d21 = m[7] - m[5], d02 = m[2] - m[6], d10 = m[3] - m[1];
    const float s10 = m[3] + m[1], s02 = m[2] + m[6], s21 = m[7] + m[5];
    float row[4];
    switch (best) {
        case 0: row[0] = four[0]; row[1] = d21; row[2] = d02; row[3] = d10; break;
        case 1: row[0] = d21; row[1] = four[1]; row[2] = s10; row[3] = s02; break;
        case 2: row[0] = d02; row[1] = s10; row[2] = four[2]; row[3] = s21; break;
        default: row[0] = d10; row[1] = s02; row[2] = s21; row[3] = four[3]; break;
    }
    const float two_q = std::sqrt(std::max(four[best], 1e-8f));
    float n = 0;
    for (int i = 0; i < 4; ++i) {
        q[i] = row[i] / (2.0f * two_q);
        n += q[i] * q[i];
    }
    n = std::max(std::sqrt(n), EPS);
    const float sign = q[0] < 0 ? -1.0f : 1.0f;
    for (int i = 0; i < 4; ++i) q[i] = sign * q[i] / n;
}

}  // namespace

extern "C" {

void gft_bind_forward(int64_t B, int64_t V, const float* vertices, const int64_t* faces, int64_t N,
                      const int64_t* parent, const float* xyz, const float* quats, const float* log_scales,
                      float* means_out, float* quats_out, float* scales_out, int threads) {
    gft::parallel_for(B * N, 4096, threads, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
            const int64_t b = i / N, n = i % N;
            const int64_t* f = faces + 3 * parent[n];
            const float* vb = vertices + b * V * 3;
            const float *v0 = vb + 3 * f[0], *v1 = vb + 3 * f[1], *v2 = vb + 3 * f[2];
            const float edge[3] = {v1[0] - v0[0], v1[1] - v0[1], v1[2] - v0[2]};
            const float other[3] = {v2[0] - v0[0], v2[1] - v0[1], v2[2] - v0[2]};
            float cr[3];
            cross3(edge, other, cr);
            const float edge_len = std::max(norm3(edge), EPS);
            const float double_area = std::max(norm3(cr), EPS);
            const float x[3] = {edge[0] / edge_len, edge[1] / edge_len, edge[2] / edge_len};
            const float z[3] = {cr[0] / double_area, cr[1] / double_area, cr[2] / double_area};
            float y[3];
            cross3(z, x, y);
            const float k = 0.5f * (edge_len + double_area / edge_len);
            const float R[9] = {x[0], y[0], z[0], x[1], y[1], z[1], x[2], y[2], z[2]};
            const float* p = xyz + 3 * n;
            float* mo = means_out + 3 * i;
            for (int r = 0; r < 3; ++r) {
                const float origin = (v0[r] + v1[r] + v2[r]) / 3.0f;
                mo[r] = k * (R[3 * r] * p[0] + R[3 * r + 1] * p[1] + R[3 * r + 2] * p[2]) + origin;
            }
            float a[4];
            matrix_to_quat(R, a);
            const float* ql = quats + 4 * n;
            const float qn = std::max(std::sqrt(ql[0] * ql[0] + ql[1] * ql[1] + ql[2] * ql[2] + ql[3] * ql[3]), EPS);
            const float bw = ql[0] / qn, bx = ql[1] / qn, by = ql[2] / qn, bz = ql[3] / qn;
            float* qo = quats_out + 4 * i;
            qo[0] = a[0] * bw - a[1] * bx - a[2] * by - a[3] * bz;
            qo[1] = a[0] * bx + a[1] * bw + a[2] * bz - a[3] * by;
            qo[2] = a[0] * by - a[1] * bz + a[2] * bw + a[3] * bx;
            qo[3] = a[0] * bz + a[1] * by - a[2] * bx + a[3] * bw;
            const float* ls = log_scales + 3 * n;
            float* so = scales_out + 3 * i;
            for (int r = 0; r < 3; ++r) so[r] = k * std::exp(ls[r]);
        }
    });
}

}  // extern "C"
