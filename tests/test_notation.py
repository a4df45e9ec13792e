"""The other spellings (design.md §1): subscripts and Unicode, numpy einsum specs, matrix
notation over declared shapes. Each reads into the bracket spelling (`text_form`), derives the
same gradient as its bracket twin, and every near miss is read as documented or refused."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DERIVATIONS, assert_gradient

import einmlp
from einmlp.cli import main

# spelled form -> the bracket form einmlp must read it as
SPELLINGS = [
    ("Ŷ_i0 = f₂(f₁(X_ij W¹_jk) W²_k0)", "Yhat[i,0] = f2(f1(X[i,j] W1[j,k]) W2[k,0])"),
    ("Yhat_i0 = f2(f1(X_ij W1_jk) W2_k0)", "Yhat[i,0] = f2(f1(X[i,j] W1[j,k]) W2[k,0])"),
    ("Δ = (Y_i0 - Ŷ_i0)²", "Delta = (Y[i,0] - Yhat[i,0])^2"),
    ("Ỹ_i = Y_i − Ŷ_i", "Ytilde[i] = Y[i] - Yhat[i]"),
    ("L = X_{mu,nu} W⁽¹⁾_{nu,k} v_k", "L = X[mu,nu] W1[nu,k] v[k]"),
    ("L = X_{mu nu} Y_μν", "L = X[mu,nu] Y[mu,nu]"),
    ("L = W_1_jk x_j x_k", "L = W1[j,k] x[j] x[k]"),
    ("L = W_{1}_jk x_j x_k", "L = W1[j,k] x[j] x[k]"),
    ("L = a_i · b_i", "L = a[i] b[i]"),
    ("L = x³ + y²", "L = x^3 + y^2"),
    ("L = ∑_i(x_i)", "L = sum[i](x[i])"),
    ("L = Σ_{i,j}(A_ij)", "L = sum[i,j](A[i,j])"),
    ("L = grad_x", "L = grad[x]"),  # '_' starts a subscript: documented, and shown by text_form
    ("h_i = tanh(σ x_i)", "h[i] = tanh(sigma x[i])"),
]


@pytest.mark.parametrize("spelled, bracket", SPELLINGS)
def test_spellings_read_as_the_bracket_form(spelled, bracket):
    assert einmlp.parse(spelled).text_form == einmlp.parse(bracket).text_form == bracket + "\n"


# near misses: (text, error class or None for "read as", message fragment or the bracket reading)
NEAR_MISSES = [
    ("L = x[i] grad_x[i]", einmlp.ParseError, "indices twice"),
    ("L = my_loss", einmlp.ParseError, "for one name write myloss"),
    ("L = X_{ij}", einmlp.ParseError, "ambiguous: indices i, j"),
    ("L = W¹ x", einmlp.ParseError, "write W1 for the name"),
    ("L = x_", einmlp.ParseError, "nothing follows it"),
    ("O = f(X W_1 + B_1) W_2 + B_2", einmlp.IndexNotationError, "look like matrices"),
    ("Yhat[i,0] = f2(f1(X W1) W2[k,0])", einmlp.IndexNotationError, "look like matrices"),
    ("X is B x D\nL = X[b,d] X", einmlp.IndexNotationError, "written without indices next to indexed"),
    ("L = x[i] @ y[i]", einmlp.IndexNotationError, "belong to matrix notation"),
    ("A is 3 x 3\nL = sum(A^2)", einmlp.IndexNotationError, "ambiguous for a square matrix"),
    ("X is B x D\nW is Z x K\nH = X W", einmlp.ShapeError, "dimensions D and Z do not match"),
    ("X is B x D\nX is B x D", einmlp.ParseError, "declared twice"),
    ("X is B x\n", einmlp.ParseError, "expected a dimension"),
    ("X is 0 x 3", einmlp.ParseError, "positive integer"),
    ("X is 3 x 1" + "0" * 5000, einmlp.ParseError, "positive integer"),  # found by fuzzing
    ("L = 'ij'", einmlp.ParseError, "only an einsum spec"),
    ("L = a @ b", einmlp.IndexNotationError, "'@' multiplies vectors and matrices"),
    # read, not refused: lowercase bare names are scalars, declared capitals too
    ("L = a b", None, "L = a b"),
    ("S is scalar\nL = S x[i] x[i]", None, "L = S x[i] x[i]"),
    ("L = sum[i](x[i]) / N", None, "L = sum[i](x[i]) / N"),
]


@pytest.mark.parametrize("text, error, fragment", NEAR_MISSES)
def test_near_misses_are_read_as_documented_or_refused(text, error, fragment):
    if error is None:
        assert einmlp.parse(text).text_form.splitlines()[-1] == fragment
        return
    with pytest.raises(error) as caught:
        einmlp.parse(text)
    assert fragment in str(caught.value)


def test_one_name_for_two_layers_is_a_shape_error_that_says_so():
    prog = einmlp.parse("f1(x) = x^2\nf2(x) = x^3\nŶ_i0 = f₂(f₁(X_ij W_jk) W_k0)\nΔ = (Y_i0 - Ŷ_i0)²")
    with pytest.raises(einmlp.ShapeError) as caught:
        prog.grad("W").compile()(X=np.ones((10, 3)), W=np.ones((3, 4)), Y=np.ones((10, 1)))
    assert "W is used as W[j,k] and W[k,0]" in str(caught.value) and "W¹ and W²" in str(caught.value)


def test_the_request_derives_the_articles_gradient_character_for_character():
    article, mission = einmlp.load(DERIVATIONS / "article.ein"), einmlp.load(DERIVATIONS / "mission.ein")
    for wrt in ("W1", "W2"):
        assert mission.grad(wrt).index_form == article.grad(wrt).index_form
        assert mission.grad(wrt).matrix_form == article.grad(wrt).matrix_form


# -- einsum specs --------------------------------------------------------------------------

def test_an_einsum_statement_reads_as_its_contraction_and_derives():
    prog = einmlp.parse('C = einsum("ij,jk->ik", X, W)\nL = C[i,k] C[i,k]')
    assert prog.text_form == "C[i,k] = X[i,j] W[j,k]\nL = C[i,k] C[i,k]\n"
    rng = np.random.default_rng(0)
    arrays = {"X": rng.standard_normal((4, 3)), "W": rng.standard_normal((3, 2))}
    np.testing.assert_allclose(prog.grad("W").compile()(**arrays), 2 * arrays["X"].T @ (arrays["X"] @ arrays["W"]))
    assert_gradient(prog.grad("W"), arrays, twin="C[i,k] = X[i,j] W[j,k]\nL = C[i,k] C[i,k]")


@pytest.mark.parametrize("text, twin", [
    ('L = sum[i](tanh(einsum("ij,j->i", X, w)))', "L = sum[i](tanh(sum[j](X[i,j] w[j])))"),
    ('L = einsum("ij,j", tanh(X), w) v[i]', "L = sum[j](tanh(X[i,j]) w[j]) v[i]"),
    ('T[i] = einsum("ii->i", A) + einsum("ij->i", A)\nL = T[i]^2', "T[i] = A[i,i] + sum[j](A[i,j])\nL = T[i]^2"),
    ('L = einsum("ij,ij->", X, X)', "L = X[i,j] X[i,j]"),
])
def test_einsums_inside_expressions_derive_like_their_twins(text, twin):
    prog = einmlp.parse(text)
    rng = np.random.default_rng(1)
    shapes = {"X": (4, 3), "w": (3,), "v": (4,), "A": (3, 3)}
    arrays = {n: rng.standard_normal(shapes[n]) for n in prog.inputs}
    wrt = prog.inputs[0]
    np.testing.assert_allclose(prog.compile()(**arrays), einmlp.parse(twin).compile()(**arrays), rtol=1e-12)
    assert_gradient(prog.grad(wrt), arrays, twin=twin)


@pytest.mark.parametrize("text, fragment", [
    ('C = einsum("ij,jk->ik", X)', "2 operands in the spec, 1 given"),
    ('X is 3 x 4\nC = einsum("i,i->i", X, X)', "operand 1 (X) has 2 axes, the spec gives it 1"),
    ('C = einsum("ij,jk->ii", X, W)', "output index 'i' is repeated"),
    ('C = einsum("ij,j1->i", X, W)', "'1' is not an index letter"),
    ('C = einsum("...j,j->...", X, W)', "'...'"),
    ('C = einsum("ij,jk->iz", X, W)', "output index 'z' is not in any operand"),
    ('C = einsum("ij,jk->ik", X[a,b], W)', "written with indices"),
])
def test_bad_einsum_specs_name_the_spec(text, fragment):
    with pytest.raises(einmlp.IndexNotationError) as caught:
        einmlp.parse(text)
    assert fragment in str(caught.value) and "einsum spec" in str(caught.value)


# -- matrix notation -----------------------------------------------------------------------

def test_seed_000_in_matrix_notation_reads_as_its_bracket_twin_and_shows_its_algebra():
    prog = einmlp.load(DERIVATIONS / "seed000_matrix.ein")
    assert "O[b,k] = f(X[b,d] W1[d,z] + B1[0,z]) W2[z,k] + B2[0,k]" in prog.text_form
    algebra = prog.syntax.statements[0].algebra
    assert algebra == ("X W1 is [B x D] [D x Z] = [B x Z]", "X W1 + B1 is [B x Z] + [1 x Z] = [B x Z]",
                       "f(X W1 + B1) is [B x Z]", "f(X W1 + B1) W2 is [B x Z] [Z x K] = [B x K]",
                       "f(X W1 + B1) W2 + B2 is [B x K] + [1 x K] = [B x K]")


@pytest.mark.parametrize("text, twin", [
    ("X is 5 x 3\nW is 3 x 4\nV is 5 x 4\nH = (X W) ⊙ V\nL = sum(H * H)",
     "H[i,j] = X[i,k] W[k,j] V[i,j]\nL = sum[i,j](H[i,j] H[i,j])"),
    ("X is 5 x 3\nW is 4 x 3\nL = sum(tanh(X @ W.T))", "L = sum[i,j](tanh(X[i,k] W[j,k]))"),
    ("X is 5 x 3\nW is 4 x 3\nL = sum(tanh(X Wᵀ)^2)", "L = sum[i,j](tanh(X[i,k] W[j,k])^2)"),
    ("A is 3 x 3\nv is 3\nL = sum(tanh(A * A) v)", "L = sum[i](sum[j](tanh(A[i,j] A[i,j]) v[j]))"),
    ("X is N x D\nw is D\nL = sum(log(1 + exp(-(X w))))", "L = sum[n](log(1 + exp(-X[n,d] w[d])))"),
    ("X is 4 x 3\nW is 3 x 3\nH = X W W\nL = sum(H / (1 + X W))",
     "H[i,j] = X[i,k] W[k,l] W[l,j]\nL = sum[i,j](H[i,j] / (1 + X[i,k] W[k,j]))"),
])
def test_matrix_notation_derives_like_its_twin(text, twin):
    prog = einmlp.parse(text)
    arrays = prog.example_arrays(seed=3, X=(6, 2), w=(2,)) if "N x D" in text else prog.example_arrays(seed=3)
    np.testing.assert_allclose(prog.compile()(**arrays), einmlp.parse(twin).compile()(**arrays), rtol=1e-12)
    for wrt in prog.inputs:
        assert_gradient(prog.grad(wrt), arrays, twin=twin)


def test_declarations_give_default_shapes_and_example_arrays():
    prog = einmlp.load(DERIVATIONS / "article.ein")
    assert prog.declared_shapes == {"X": (10, 3), "W1": (3, 4), "W2": (4, 1), "Y": (10, 1)}
    arrays = prog.example_arrays(seed=0)
    assert {n: a.shape for n, a in arrays.items()} == prog.declared_shapes
    with pytest.raises(einmlp.ShapeError, match="no numeric shape for X"):
        einmlp.load(DERIVATIONS / "seed000_matrix.ein").example_arrays()


# -- the way back: printed programs and printed einsum code run --------------------------

def test_shapes_command_uses_declared_shapes(capsys):
    assert main(["shapes", str(DERIVATIONS / "article.ein")]) == 0
    assert "[10 x 3][3 x 4] = [10 x 4]" in capsys.readouterr().out


def test_derive_format_program_prints_the_bracket_spelling(capsys):
    assert main(["derive", str(DERIVATIONS / "mission.ein"), "--format", "program"]) == 0
    out = capsys.readouterr().out
    assert "Yhat[i,0] = f2(f1(X[i,j] W1[j,k]) W2[k,0])" in out and "Delta = (Y[i,0] - Yhat[i,0])^2" in out
    assert einmlp.parse(out).text_form == out  # printed text reads back as itself


@pytest.mark.parametrize("path", sorted(DERIVATIONS.glob("*.ein")), ids=lambda p: p.stem)
def test_printed_einsum_code_runs_and_matches(path, capsys):
    prog = einmlp.load(path)
    rng = np.random.default_rng(5)
    shapes = {**prog.declared_shapes, "X": (8, 3), "W1": (3, 5), "B1": (1, 5), "W2": (5, 2), "B2": (1, 2),
              "T": (8, 2)} if path.stem == "seed000_matrix" else prog.declared_shapes
    arrays = {n: rng.standard_normal(shapes[n]) for n in prog.inputs}
    wrt = prog.inputs[1] if len(prog.inputs) > 1 else prog.inputs[0]
    assert main(["derive", str(path), "--wrt", wrt, "--format", "einsum"]) == 0
    source = capsys.readouterr().out
    assert "oe." not in source and "np.einsum(" in source
    namespace: dict = {}
    exec(compile(source, "<printed>", "exec"), namespace)  # the test runs what the user would paste
    function = next(v for k, v in namespace.items() if k.startswith("d") and callable(v))
    expected = prog.grad(wrt).compile()(**arrays)
    np.testing.assert_allclose(function(*(arrays[n] for n in prog.grad(wrt).plan.inputs)), expected, rtol=1e-12)
