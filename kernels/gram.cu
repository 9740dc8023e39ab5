// Cosine self-similarity of a batch of videos: S_b = F̂_b · F̂_bᵀ, fp32 accumulation.
//
// Layout: features  [videos][steps][dim]   row-major, short videos zero-padded to `steps`
//         inverse   [videos][steps]        1/||row||, 0 for a (near-)zero row
//         ssm       [videos][steps][steps]
//
// The normalisation is folded into the Gram kernel's epilogue (S_ij = (f_i·f_j)·inv_i·inv_j)
// so the normalised features are never written back: the features are read once per tile.
//
// Paper tuning for Hopper (sm_90): Charades-like inputs are ~90-128 steps, so one 128×128
// tile covers a whole video and a block computes it alone. 256 threads each hold an 8×8
// register tile (64 accumulators) of outputs strided by 16, so a warp's shared-memory reads
// touch 16 consecutive words (no bank conflicts) and each k step does 64 FMAs for 16 shared
// loads. The k dimension is staged through shared memory 16 columns at a time (2 × 8.4 KiB),
// leaving room for 2-3 resident blocks per SM. Arithmetic intensity at D = 1,024 is about
// 64 FLOP per byte of features, well above the H100/H200 fp32 ridge (~14), so the kernel is
// compute bound and the register tile is what sets its speed.
//
// src/compute/emulate.rs runs these same loops in Rust; keep the two in step.

#define GRAM_TILE 128
#define GRAM_K 16
#define GRAM_THREADS 256
#define GRAM_SIDE 16 /* threads per tile side: GRAM_SIDE * GRAM_SIDE = GRAM_THREADS */
#define GRAM_REG (GRAM_TILE / GRAM_SIDE)
#define MIN_NORM 1e-12f

// One warp per row.
extern "C" __global__ void row_inverse_norms(const float *__restrict__ features,
                                             float *__restrict__ inverse, int rows, int dim) {
    int row = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows) {
        return; // the whole warp leaves together: `row` is uniform across it
    }
    const float *r = features + (size_t)row * dim;
    float sum = 0.0f;
    for (int c = lane; c < dim; c += 32) {
        float v = r[c];
        sum += v * v;
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
        sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    }
    if (lane == 0) {
        float norm = sqrtf(sum);
        inverse[row] = norm > MIN_NORM ? 1.0f / norm : 0.0f;
    }
}

// Grid: x = one upper-triangle tile pair (ti <= tj) of a video, y = the video. S is symmetric,
// so a pair off the diagonal writes its tile and the mirror image.
extern "C" __global__ void __launch_bounds__(GRAM_THREADS)
    gram(const float *__restrict__ features, const float *__restrict__ inverse,
         float *__restrict__ ssm, int steps, int dim) {
    int tiles = (steps + GRAM_TILE - 1) / GRAM_TILE;
    int pair = blockIdx.x;
    int ti = 0;
    while (pair >= tiles - ti) {
        pair -= tiles - ti;
        ti += 1;
    }
    int tj = ti + pair;
    size_t video = blockIdx.y;
    const float *f = features + video * steps * dim;

    __shared__ float rows_a[GRAM_K][GRAM_TILE + 4];
    __shared__ float rows_b[GRAM_K][GRAM_TILE + 4];
    int tx = threadIdx.x % GRAM_SIDE;
    int ty = threadIdx.x / GRAM_SIDE;
    float acc[GRAM_REG][GRAM_REG];
#pragma unroll
    for (int i = 0; i < GRAM_REG; i++) {
#pragma unroll
        for (int j = 0; j < GRAM_REG; j++) {
            acc[i][j] = 0.0f;
        }
    }
    for (int k0 = 0; k0 < dim; k0 += GRAM_K) {
        // 16 consecutive threads read 16 consecutive floats of one row (64-byte segments).
        for (int e = threadIdx.x; e < GRAM_TILE * GRAM_K; e += GRAM_THREADS) {
            int r = e / GRAM_K;
            int k = e % GRAM_K;
            int ra = ti * GRAM_TILE + r;
            int rb = tj * GRAM_TILE + r;
            int kk = k0 + k;
            rows_a[k][r] = (ra < steps && kk < dim) ? f[(size_t)ra * dim + kk] : 0.0f;
            rows_b[k][r] = (rb < steps && kk < dim) ? f[(size_t)rb * dim + kk] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < GRAM_K; k++) {
            float a[GRAM_REG];
            float b[GRAM_REG];
#pragma unroll
            for (int i = 0; i < GRAM_REG; i++) {
                a[i] = rows_a[k][ty + GRAM_SIDE * i];
                b[i] = rows_b[k][tx + GRAM_SIDE * i];
            }
#pragma unroll
            for (int i = 0; i < GRAM_REG; i++) {
#pragma unroll
                for (int j = 0; j < GRAM_REG; j++) {
                    acc[i][j] += a[i] * b[j];
                }
            }
        }
        __syncthreads();
    }
    const float *inv = inverse + video * steps;
    float *s = ssm + video * steps * steps;
#pragma unroll
    for (int i = 0; i < GRAM_REG; i++) {
        int r = ti * GRAM_TILE + ty + GRAM_SIDE * i;
#pragma unroll
        for (int j = 0; j < GRAM_REG; j++) {
            int c = tj * GRAM_TILE + tx + GRAM_SIDE * j;
            if (r < steps && c < steps) {
                float v = acc[i][j] * inv[r] * inv[c];
                s[(size_t)r * steps + c] = v;
                if (ti != tj) {
                    s[(size_t)c * steps + r] = v;
                }
            }
        }
    }
}
