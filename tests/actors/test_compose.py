import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from actors.compose import MergedLayer, compose_factors
from lorahub_ray.modules import load_stack


def _factors_from_files(module_dirs, layer_path):
    """Read one layer's A and B of each module straight from its safetensors file."""
    As, Bs = [], []
    for directory in module_dirs:
        tensors = load_file(f"{directory}/adapter_model.safetensors")
        As.append(tensors[f"base_model.model.{layer_path}.lora_A.weight"])
        Bs.append(tensors[f"base_model.model.{layer_path}.lora_B.weight"])
    return As, Bs


def test_ab_composition_equals_a_loop_over_the_module_files(t5_world):
    stack = load_stack(t5_world["modules"])
    w = np.array([0.7, -1.2, 0.4])
    for layer in stack.layers:
        As, Bs = _factors_from_files(t5_world["modules"], layer.path)
        expected_A = sum(wi * a for wi, a in zip(w, As))
        expected_B = sum(wi * b for wi, b in zip(w, Bs))
        A_c, B_c = compose_factors(torch.tensor(w, dtype=torch.float32), torch.from_numpy(layer.A),
                                   torch.from_numpy(layer.B), "ab")
        np.testing.assert_allclose(A_c.numpy(), expected_A, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(B_c.numpy(), expected_B, rtol=1e-5, atol=1e-6)


def test_delta_composition_is_the_exact_weighted_sum_of_products(t5_world):
    stack = load_stack(t5_world["modules"])
    w = np.array([0.7, -1.2, 0.4])
    layer = stack.layers[0]
    As, Bs = _factors_from_files(t5_world["modules"], layer.path)
    expected = sum(wi * b @ a for wi, a, b in zip(w, As, Bs))
    A_c, B_c = compose_factors(torch.tensor(w, dtype=torch.float32), torch.from_numpy(layer.A),
                               torch.from_numpy(layer.B), "delta")
    assert A_c.shape == (3 * stack.rank, layer.A.shape[2])
    np.testing.assert_allclose((B_c @ A_c).numpy(), expected, rtol=1e-5, atol=1e-6)
    ab = compose_factors(torch.tensor(w, dtype=torch.float32), torch.from_numpy(layer.A), torch.from_numpy(layer.B), "ab")
    assert not np.allclose((ab[1] @ ab[0]).numpy(), expected, atol=1e-4)  # ab has cross terms


def test_merged_layer_starts_from_pristine_weights_every_time():
    torch.manual_seed(0)
    linear = torch.nn.Linear(6, 5)
    original = linear.weight.detach().clone()
    target = MergedLayer(linear, scaling=2.0)
    A1, B1, A2, B2 = torch.randn(2, 6), torch.randn(5, 2), torch.randn(2, 6), torch.randn(5, 2)
    target.apply(A1, B1)
    first = linear.weight.detach().clone()
    torch.testing.assert_close(first, original + 2.0 * B1 @ A1)
    target.apply(A2, B2)
    target.apply(A1, B1)
    torch.testing.assert_close(linear.weight.detach(), first, rtol=0, atol=0)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="`mode` must be one of"):
        compose_factors(torch.zeros(2), torch.zeros(2, 1, 3), torch.zeros(2, 3, 1), "sum")
