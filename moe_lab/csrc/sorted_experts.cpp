// The sorted backend's expert step in C++: one operator call for the forward, one for the
// backward, instead of hundreds of Python-issued operator calls per MoE layer and step.
//
// Same arithmetic as moe_lab/dispatch/sorted.py's SortedExpertsFunction (the readable
// reference, which the tests compare this against), with two differences in how it runs:
//   * no Python, no autograd dispatch per product: each call to ATen goes straight to its CPU
//     kernel (at::AutoDispatchBelowADInplaceOrView), on views made in C++;
//   * the experts run in parallel, one expert per task (OpenMP, dynamic schedule, busiest
//     first), and every matrix product inside a task runs on one thread. On a small model the
//     experts' products are too small for MKL to split well; the experts split perfectly.
// Every task writes only its own expert's rows and weight gradients, so the result does not
// depend on the number of threads.
//
// Shapes: x (N, D), token_index (M,), slot_index (M,), weights (N, K), inverse (N*K,),
// w_gate / w_up (E, D, F), w_down (E, F, D), offsets (E+1) with offsets[E] = M.
// Buffers come from the caller (its BufferPool): rows (M, D); gate, act, up, hidden (M, F);
// out (M+1, D), whose last row is zero (what a dropped slot's inverse points at).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <exception>
#include <mutex>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

using at::Tensor;

// Run body(task) for every task, in parallel when torch has more than one thread.
template <typename Body>
void for_each_task(int64_t n_tasks, const Body& body) {
  const int threads = at::get_num_threads();
  std::exception_ptr error;
  std::mutex error_lock;
  auto guarded = [&](int64_t task) {
    try {
      at::AutoDispatchBelowADInplaceOrView below_autograd;  // workers start with default TLS
      body(task);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_lock);
      if (!error) error = std::current_exception();
    }
  };
#ifdef _OPENMP
  if (threads > 1 && n_tasks > 1 && !at::in_parallel_region()) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int64_t task = 0; task < n_tasks; ++task) guarded(task);
  } else {
    for (int64_t task = 0; task < n_tasks; ++task) guarded(task);
  }
#else
  (void)threads;
  for (int64_t task = 0; task < n_tasks; ++task) guarded(task);
#endif
  if (error) std::rethrow_exception(error);
}

// Experts that received rows, busiest first (the dynamic schedule then balances the rest).
std::vector<int64_t> busy_experts(at::IntArrayRef offsets) {
  std::vector<int64_t> experts;
  for (int64_t e = 0; e + 1 < static_cast<int64_t>(offsets.size()); ++e)
    if (offsets[e + 1] > offsets[e]) experts.push_back(e);
  std::stable_sort(experts.begin(), experts.end(), [&](int64_t a, int64_t b) {
    return offsets[a + 1] - offsets[a] > offsets[b + 1] - offsets[b];
  });
  return experts;
}

void check_inputs(const Tensor& x, const Tensor& token_index, const Tensor& inverse,
                  const Tensor& w_up, at::IntArrayRef offsets) {
  TORCH_CHECK(x.device().is_cpu(), "moe_lab's compiled experts run on the CPU only");
  TORCH_CHECK(x.dim() == 2, "x must be an (N, D) tensor");
  TORCH_CHECK(token_index.scalar_type() == at::kLong && inverse.scalar_type() == at::kLong,
              "token_index and inverse must be int64");
  TORCH_CHECK(static_cast<int64_t>(offsets.size()) == w_up.size(0) + 1,
              "offsets must have E + 1 entries");
  TORCH_CHECK(offsets.back() == token_index.size(0), "offsets[E] must equal M");
}

// y[n] = sum_k weights[n, k] * rows[inverse[n*K + k]]  (weights may be undefined: plain sum).
// rows (M+1, D) with a zero last row; y (N, D).
template <typename scalar_t>
void combine(const Tensor& rows, const Tensor& inverse, const Tensor& weights, int64_t top_k,
             Tensor& y) {
  const int64_t n_tokens = y.size(0), d = y.size(1);
  const scalar_t* rows_p = rows.const_data_ptr<scalar_t>();
  const int64_t* inv = inverse.const_data_ptr<int64_t>();
  const scalar_t* w = weights.defined() ? weights.const_data_ptr<scalar_t>() : nullptr;
  scalar_t* y_p = y.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, n_tokens, 256, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      scalar_t* out = y_p + n * d;
      for (int64_t k = 0; k < top_k; ++k) {
        const scalar_t* src = rows_p + inv[n * top_k + k] * d;
        const scalar_t scale = w ? w[n * top_k + k] : scalar_t(1);
        if (k == 0) {
          for (int64_t j = 0; j < d; ++j) out[j] = scale * src[j];
        } else {
          for (int64_t j = 0; j < d; ++j) out[j] += scale * src[j];
        }
      }
    }
  });
}

Tensor sorted_experts_forward(const Tensor& x, const Tensor& token_index, const Tensor& weights_in,
                              const Tensor& inverse_in, const std::optional<Tensor>& w_gate,
                              const Tensor& w_up, const Tensor& w_down, at::IntArrayRef offsets,
                              Tensor rows, const std::optional<Tensor>& gate,
                              const std::optional<Tensor>& act, Tensor up, Tensor hidden,
                              Tensor out) {
  check_inputs(x, token_index, inverse_in, w_up, offsets);
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Tensor weights = weights_in.contiguous(), inverse = inverse_in.contiguous();
  const bool swiglu = w_gate.has_value();
  const int64_t n_rows = token_index.size(0);
  at::index_select_out(rows, x, 0, token_index);  // (M, D)
  const std::vector<int64_t> experts = busy_experts(offsets);
  for_each_task(static_cast<int64_t>(experts.size()), [&](int64_t task) {
    const int64_t e = experts[task], start = offsets[e], n = offsets[e + 1] - start;
    const Tensor rows_e = rows.narrow(0, start, n);  // (n, D)
    Tensor up_e = up.narrow(0, start, n), hidden_e = hidden.narrow(0, start, n);  // (n, F)
    at::mm_out(up_e, rows_e, w_up.select(0, e));
    if (swiglu) {
      Tensor gate_e = gate->narrow(0, start, n), act_e = act->narrow(0, start, n);
      at::mm_out(gate_e, rows_e, w_gate->select(0, e));
      at::silu_out(act_e, gate_e);
      at::mul_out(hidden_e, act_e, up_e);
    } else {
      at::gelu_out(hidden_e, up_e);
    }
    Tensor out_e = out.narrow(0, start, n);
    at::mm_out(out_e, hidden_e, w_down.select(0, e));  // (n, D)
  });
  out.select(0, n_rows).zero_();
  const int64_t top_k = weights.size(1);
  Tensor y = at::empty({x.size(0), x.size(1)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sorted_experts_combine",
                             [&] { combine<scalar_t>(out, inverse, weights, top_k, y); });
  return y;
}

// grad_out[m] = weights[slot m] * grad_y[token m]; per_row[m] = <grad_y[token m], out[m]>.
template <typename scalar_t>
void gather_grad_rows(const Tensor& grad_y, const Tensor& token_index, const Tensor& slot_index,
                      const Tensor& weights, const Tensor& out, Tensor& grad_out,
                      Tensor& per_row) {
  const int64_t n_rows = token_index.size(0), d = grad_y.size(1);
  const scalar_t* gy = grad_y.const_data_ptr<scalar_t>();
  const scalar_t* out_p = out.const_data_ptr<scalar_t>();
  const scalar_t* w = weights.const_data_ptr<scalar_t>();
  const int64_t* tok = token_index.const_data_ptr<int64_t>();
  const int64_t* slot = slot_index.const_data_ptr<int64_t>();
  scalar_t* go = grad_out.mutable_data_ptr<scalar_t>();
  scalar_t* dots = per_row.defined() ? per_row.mutable_data_ptr<scalar_t>() : nullptr;
  at::parallel_for(0, n_rows, 256, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      const scalar_t* src = gy + tok[m] * d;
      scalar_t* dst = go + m * d;
      const scalar_t scale = w[slot[m]];
      if (dots) {
        const scalar_t* o = out_p + m * d;
        scalar_t dot = 0;
        for (int64_t j = 0; j < d; ++j) dot += src[j] * o[j];
        dots[m] = dot;
      }
      for (int64_t j = 0; j < d; ++j) dst[j] = scale * src[j];
    }
  });
}

// target = a @ b on an expert's first chunk of rows, target += a @ b on the next ones.
void matmul_into(Tensor& target, const Tensor& a, const Tensor& b, bool first) {
  if (first) {
    at::mm_out(target, a, b);
  } else {
    target.addmm_(a, b);
  }
}

// Returns (grad_x, grad_weights, grad_w_gate, grad_w_up, grad_w_down); each undefined when
// not needed. Workspace: grad_out (M, D), grad_rows (M+1, D), and per thread three (block, F)
// temporaries in scratch (threads, 3, block, F).
std::vector<Tensor> sorted_experts_backward(
    const Tensor& grad_y_in, const Tensor& rows, const Tensor& token_index_in,
    const Tensor& slot_index_in, const Tensor& weights_in, const Tensor& inverse_in,
    const std::optional<Tensor>& w_gate, const Tensor& w_up, const Tensor& w_down,
    const std::optional<Tensor>& gate, const std::optional<Tensor>& act, const Tensor& up,
    const Tensor& hidden, const Tensor& out, at::IntArrayRef offsets, bool need_x,
    bool need_weights, const std::optional<Tensor>& grad_w_gate_buf,
    const std::optional<Tensor>& grad_w_up_buf, const std::optional<Tensor>& grad_w_down_buf,
    Tensor grad_out, Tensor grad_rows, Tensor scratch) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const bool swiglu = w_gate.has_value();
  const Tensor grad_y = grad_y_in.contiguous(), weights = weights_in.contiguous();
  const int64_t n_rows = rows.size(0), top_k = weights.size(1);
  const int64_t block = scratch.size(2);
  const Tensor token_index = token_index_in.contiguous(), slot_index = slot_index_in.contiguous();
  const Tensor inverse = inverse_in.contiguous();
  TORCH_CHECK(scratch.size(0) >= at::get_num_threads(), "scratch needs one slice per thread");

  Tensor per_row;  // (M+1,): <dL/dy[token], out[row]>, 0 for the dropped slot's row
  if (need_weights) per_row = at::zeros({n_rows + 1}, rows.options());
  AT_DISPATCH_FLOATING_TYPES(rows.scalar_type(), "sorted_experts_gather_grad", [&] {
    gather_grad_rows<scalar_t>(grad_y, token_index, slot_index, weights, out, grad_out, per_row);
  });
  Tensor grad_weights;
  if (need_weights) grad_weights = per_row.index_select(0, inverse).view(weights.sizes());

  Tensor grad_w_gate = grad_w_gate_buf.value_or(Tensor());
  Tensor grad_w_up = grad_w_up_buf.value_or(Tensor());
  Tensor grad_w_down = grad_w_down_buf.value_or(Tensor());
  // only the combine weights' gradient asked for: the experts' backward is not needed
  const bool expert_grads = need_x || grad_w_gate.defined() || grad_w_up.defined() ||
                            grad_w_down.defined();
  const std::vector<int64_t> experts = expert_grads ? busy_experts(offsets)
                                                    : std::vector<int64_t>();
  for_each_task(static_cast<int64_t>(experts.size()), [&](int64_t task) {
#ifdef _OPENMP
    const int64_t thread = omp_in_parallel() ? omp_get_thread_num() : 0;
#else
    const int64_t thread = 0;
#endif
    Tensor grad_hidden_t = scratch.select(0, thread).select(0, 0);  // (block, F)
    Tensor grad_up_t = scratch.select(0, thread).select(0, 1);
    Tensor grad_gate_t = scratch.select(0, thread).select(0, 2);
    const int64_t e = experts[task];
    for (int64_t start = offsets[e]; start < offsets[e + 1]; start += block) {
      const int64_t n = std::min(block, offsets[e + 1] - start);
      const bool first = start == offsets[e];
      const Tensor go = grad_out.narrow(0, start, n);  // (n, D)
      const Tensor rows_t = rows.narrow(0, start, n).t();  // (D, n)
      if (grad_w_down.defined()) {
        Tensor target = grad_w_down.select(0, e);
        matmul_into(target, hidden.narrow(0, start, n).t(), go, first);  // (F, D)
      }
      Tensor gh = grad_hidden_t.narrow(0, 0, n), gu = grad_up_t.narrow(0, 0, n);  // (n, F)
      at::mm_out(gh, go, w_down.select(0, e).t());  // dL/d(hidden)
      Tensor gg;
      if (swiglu) {
        at::mul_out(gu, gh, act->narrow(0, start, n));  // dL/d(up) = dL/dh * silu(gate)
        gh.mul_(up.narrow(0, start, n));  // dL/d(silu(gate)) = dL/dh * up
        gg = grad_gate_t.narrow(0, 0, n);
        at::silu_backward_out(gg, gh, gate->narrow(0, start, n));  // dL/d(gate)
      } else {
        at::gelu_backward_out(gu, gh, up.narrow(0, start, n));
      }
      if (need_x) {
        Tensor gr = grad_rows.narrow(0, start, n);  // (n, D)
        at::mm_out(gr, gu, w_up.select(0, e).t());
        if (swiglu) gr.addmm_(gg, w_gate->select(0, e).t());
      }
      if (grad_w_up.defined()) {
        Tensor target = grad_w_up.select(0, e);
        matmul_into(target, rows_t, gu, first);  // (D, F)
      }
      if (swiglu && grad_w_gate.defined()) {
        Tensor target = grad_w_gate.select(0, e);
        matmul_into(target, rows_t, gg, first);
      }
    }
  });
  for (int64_t e = 0; e + 1 < static_cast<int64_t>(offsets.size()); ++e) {
    if (offsets[e + 1] > offsets[e]) continue;  // an expert without rows: zero gradient
    for (Tensor* grad : {&grad_w_gate, &grad_w_up, &grad_w_down})
      if (grad->defined()) grad->select(0, e).zero_();
  }
  Tensor grad_x;
  if (need_x) {
    grad_rows.select(0, n_rows).zero_();
    grad_x = at::empty({grad_y.size(0), grad_y.size(1)}, grad_y.options());
    AT_DISPATCH_FLOATING_TYPES(rows.scalar_type(), "sorted_experts_combine_grad", [&] {
      combine<scalar_t>(grad_rows, inverse, Tensor(), top_k, grad_x);
    });
  }
  // what was not asked for comes back empty (a list of tensors cannot hold "none")
  std::vector<Tensor> grads = {grad_x, grad_weights, grad_w_gate, grad_w_up, grad_w_down};
  for (Tensor& grad : grads)
    if (!grad.defined()) grad = at::empty({0}, rows.options());
  return grads;
}

bool built_with_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

}  // namespace

// The two operators' schemas are defined in Python (moe_lab/dispatch/sorted_cpp.py), so that
// they exist, with their FLOP formulas, before this library is built; it adds their CPU kernels.
TORCH_LIBRARY_FRAGMENT(moe_lab, m) { m.def("built_with_openmp() -> bool", &built_with_openmp); }

TORCH_LIBRARY_IMPL(moe_lab, CPU, m) {
  m.impl("sorted_experts_forward", &sorted_experts_forward);
  m.impl("sorted_experts_backward", &sorted_experts_backward);
}
