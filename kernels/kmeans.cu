// Lloyd's k-means for the atomic-event step, one block per (video, trial) problem, every
// iteration on the device (no host round trip between iterations).
//
// The points of video v are the rows of its SSM, read in place: point i = ssm[v][i][0..n)
// followed, when `with_time` is set, by the position column extra[v][i] (computed by the host,
// which has the SSM anyway for the k-means++ seeding). Seeding stays on the host: it is k
// sequential weighted draws, cheap (k·n·dim), and drawing them from the same generator as the
// CPU path is what makes the device's clusterings the CPU's, label for label.
//
// Bit-for-bit parity with src/events.rs is by construction: compiled with --fmad=false, every
// dot product sums in the same order as `similarity::dot` (eight lanes, then the tail), the
// cluster sums add points in index order, and the convergence shift, the empty-cluster restart
// and the inertia are summed by one thread in the CPU's order. Those serial parts are O(k·dim)
// per iteration against the O(n·k·dim) assignment, which all threads share.
//
// src/compute/emulate.rs runs these same phases in Rust; keep the two in step.

__device__ float point_value(const float *ssm, const float *extra, int steps, int n, int i,
                             int d) {
    return d < n ? ssm[(size_t)i * steps + d] : extra[i];
}

// similarity::dot's order: eight partial sums over whole chunks, summed in lane order, plus
// the tail summed in index order.
__device__ float dot_point(const float *ssm, const float *extra, int steps, int n, int dim,
                           int i, const float *y) {
    float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    int whole = dim / 8 * 8;
    for (int m = 0; m < whole; m += 8) {
        for (int l = 0; l < 8; l++) {
            acc[l] += point_value(ssm, extra, steps, n, i, m + l) * y[m + l];
        }
    }
    float tail = 0.0f;
    for (int m = whole; m < dim; m++) {
        tail += point_value(ssm, extra, steps, n, i, m) * y[m];
    }
    float sum = 0.0f;
    for (int l = 0; l < 8; l++) {
        sum += acc[l];
    }
    return sum + tail;
}

__device__ float dot_self(const float *x, int dim) {
    float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    int whole = dim / 8 * 8;
    for (int m = 0; m < whole; m += 8) {
        for (int l = 0; l < 8; l++) {
            acc[l] += x[m + l] * x[m + l];
        }
    }
    float tail = 0.0f;
    for (int m = whole; m < dim; m++) {
        tail += x[m] * x[m];
    }
    float sum = 0.0f;
    for (int l = 0; l < 8; l++) {
        sum += acc[l];
    }
    return sum + tail;
}

// The centres' squared norms, then, every thread taking points i = tid, tid + blockDim, ...,
// each point's label and squared distance. Called by the whole block; ends synchronised.
__device__ void assign(const float *ssm, const float *extra, int steps, int n, int dim, int k,
                       const float *centers, float *center_norms, const float *norms,
                       int *labels, float *distances) {
    for (int c = threadIdx.x; c < k; c += blockDim.x) {
        center_norms[c] = dot_self(centers + c * dim, dim);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        int best = 0;
        float best_d = __int_as_float(0x7f800000); // +inf
        for (int c = 0; c < k; c++) {
            float d = norms[i] - 2.0f * dot_point(ssm, extra, steps, n, dim, i, centers + c * dim) +
                      center_norms[c];
            if (d < best_d) {
                best = c;
                best_d = d;
            }
        }
        labels[i] = best;
        distances[i] = fmaxf(best_d, 0.0f);
    }
    __syncthreads();
}

// Dynamic shared memory, in this order: centers [k·dim], sums [k·dim], center_norms [k],
// norms [n], distances [n], labels [n] (int), counts [k] (int), far [k] (int), shift [1];
// kmeans_shared_bytes in src/similarity/cuda.rs sizes it.
//
// centers: in, the host's k-means++ starts, [problems][k][stride]; labels: out,
// [problems][steps]; inertia: out, [problems].
extern "C" __global__ void kmeans(const float *__restrict__ ssm, const float *__restrict__ extra,
                                  const int *__restrict__ sizes, const float *__restrict__ tols,
                                  const float *__restrict__ starts, int *__restrict__ labels_out,
                                  float *__restrict__ inertia_out, int steps, int trials, int k,
                                  int stride, int with_time, int max_iter) {
    extern __shared__ float shared[];
    int problem = blockIdx.x;
    int video = problem / trials;
    int n = sizes[video];
    if (n < k) {
        return; // the host clusters this video (too short, or another shape)
    }
    int dim = n + with_time;
    float tol = tols[video];
    const float *s = ssm + (size_t)video * steps * steps;
    const float *x = extra + (size_t)video * steps;

    float *centers = shared;
    float *sums = centers + k * dim;
    float *center_norms = sums + k * dim;
    float *norms = center_norms + k;
    float *distances = norms + n;
    int *labels = (int *)(distances + n);
    int *counts = labels + n;
    int *far = counts + k;
    float *shift = (float *)(far + k);

    for (int e = threadIdx.x; e < k * dim; e += blockDim.x) {
        centers[e] = starts[(size_t)problem * k * stride + (e / dim) * stride + e % dim];
    }
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
        int whole = dim / 8 * 8;
        for (int m = 0; m < whole; m += 8) {
            for (int l = 0; l < 8; l++) {
                float v = point_value(s, x, steps, n, i, m + l);
                acc[l] += v * v;
            }
        }
        float tail = 0.0f;
        for (int m = whole; m < dim; m++) {
            float v = point_value(s, x, steps, n, i, m);
            tail += v * v;
        }
        float sum = 0.0f;
        for (int l = 0; l < 8; l++) {
            sum += acc[l];
        }
        norms[i] = sum + tail;
    }
    __syncthreads();

    for (int iteration = 0; iteration < max_iter; iteration++) {
        assign(s, x, steps, n, dim, k, centers, center_norms, norms, labels, distances);
        for (int c = threadIdx.x; c < k; c += blockDim.x) {
            int count = 0;
            for (int i = 0; i < n; i++) {
                count += labels[i] == c;
            }
            counts[c] = count;
        }
        for (int d = threadIdx.x; d < dim; d += blockDim.x) {
            for (int c = 0; c < k; c++) {
                sums[c * dim + d] = 0.0f;
            }
            for (int i = 0; i < n; i++) {
                sums[labels[i] * dim + d] += point_value(s, x, steps, n, i, d);
            }
        }
        __syncthreads();
        // Non-empty clusters move to their means; `sums` keeps each value's squared move.
        for (int d = threadIdx.x; d < dim; d += blockDim.x) {
            for (int c = 0; c < k; c++) {
                if (counts[c] > 0) {
                    float scale = 1.0f / (float)counts[c];
                    float next = sums[c * dim + d] * scale;
                    float value = centers[c * dim + d];
                    sums[c * dim + d] = (next - value) * (next - value);
                    centers[c * dim + d] = next;
                }
            }
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            float total = 0.0f;
            for (int c = 0; c < k; c++) {
                if (counts[c] == 0) {
                    // An empty cluster restarts at the point worst served by its centre.
                    int worst = 0;
                    float worst_d = __int_as_float(0xff800000); // -inf
                    for (int i = 0; i < n; i++) {
                        if (distances[i] > worst_d) {
                            worst = i;
                            worst_d = distances[i];
                        }
                    }
                    distances[worst] = 0.0f;
                    far[c] = worst;
                    float moved = 0.0f;
                    for (int d = 0; d < dim; d++) {
                        float a = centers[c * dim + d] - point_value(s, x, steps, n, worst, d);
                        moved += a * a;
                    }
                    total += moved;
                } else {
                    for (int d = 0; d < dim; d++) {
                        total += sums[c * dim + d];
                    }
                }
            }
            *shift = total;
        }
        __syncthreads();
        for (int d = threadIdx.x; d < dim; d += blockDim.x) {
            for (int c = 0; c < k; c++) {
                if (counts[c] == 0) {
                    centers[c * dim + d] = point_value(s, x, steps, n, far[c], d);
                }
            }
        }
        __syncthreads();
        if (*shift <= tol) {
            break; // uniform: every thread reads the same shared value
        }
        __syncthreads(); // nobody rewrites `shift` before all have read it
    }
    assign(s, x, steps, n, dim, k, centers, center_norms, norms, labels, distances);
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        labels_out[(size_t)problem * steps + i] = labels[i];
    }
    if (threadIdx.x == 0) {
        float total = 0.0f;
        for (int i = 0; i < n; i++) {
            total += distances[i];
        }
        inertia_out[problem] = total;
    }
}
