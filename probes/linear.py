"""Small, exact linear probes: ridge regression and L2-penalised logistic regression.

They solve the same objectives as scikit-learn's ``Ridge(alpha)`` and ``LogisticRegression(C)`` with an
unpenalised intercept (tests/test_probes_statistics.py checks the fitted coefficients against
scikit-learn), but without its per-call validation overhead, which dominates when thousands of
probes of a few features each are fitted:

* ridge:     min_w,b  ||y - X w - b||² + alpha ||w||²            (closed form on centred data; the dual
  form when there are more features than samples)
* logistic:  min_w,b  C * sum_i logloss(y_i, sigmoid(x_i w + b)) + ||w||² / 2   (Newton's method up to
  ``NEWTON_MAX_FEATURES`` features, L-BFGS with the exact gradient above, e.g. for a wide residual stream)
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

NEWTON_MAX_FEATURES = 256


def ridge_fit(X: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """``(coef_P, intercept)`` of ridge regression with an unpenalised intercept."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    xm = X.mean(0)
    ym = y.mean()
    Xc = X - xm
    P = X.shape[1]
    if P == 0:
        return np.zeros(0), float(ym)
    if P <= X.shape[0]:
        coef = np.linalg.solve(Xc.T @ Xc + alpha * np.eye(P), Xc.T @ (y - ym))
    else:  # w = Xc^T (Xc Xc^T + alpha I)^-1 (y - ym): an N x N system instead of P x P
        coef = Xc.T @ np.linalg.solve(Xc @ Xc.T + alpha * np.eye(X.shape[0]), y - ym)
    return coef, float(ym - xm @ coef)


def ridge_path(Xtr: np.ndarray, ytr: np.ndarray, Xva: np.ndarray, alphas) -> np.ndarray:
    """Ridge predictions ``[len(alphas), n_val]`` for every alpha, from one SVD of the centred training data."""
    Xtr = np.asarray(Xtr, dtype=np.float64)
    xm, ym = Xtr.mean(0), float(np.mean(ytr))
    if Xtr.shape[1] == 0:
        return np.full((len(alphas), len(Xva)), ym)
    U, S, Vt = np.linalg.svd(Xtr - xm, full_matrices=False)
    Uty = U.T @ (np.asarray(ytr, dtype=np.float64) - ym)
    proj = (np.asarray(Xva, dtype=np.float64) - xm) @ Vt.T  # [n_val, r]
    out = np.empty((len(alphas), len(Xva)))
    for i, a in enumerate(alphas):
        out[i] = proj @ (S / (S ** 2 + a) * Uty) + ym
    return out


def logistic_fit(X: np.ndarray, y: np.ndarray, C: float, tol: float = 1e-10, max_iter: int = 100,
                 init: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """``(coef_P, intercept)`` of L2 logistic regression (labels 0/1) by damped Newton steps.

    ``init`` (coef then intercept) warm-starts the solver, e.g. along a regularisation path.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, P = X.shape
    Z = np.hstack([X, np.ones((n, 1))])
    reg = np.ones(P + 1)
    reg[-1] = 0.0  # intercept not penalised
    prior = np.clip(y.mean(), 1e-12, 1 - 1e-12)
    theta = np.zeros(P + 1)
    theta[-1] = np.log(prior / (1 - prior))
    if init is not None:
        theta = np.asarray(init, dtype=np.float64).copy()

    def objective(t):
        z = Z @ t
        # log(1 + e^z) - y z, computed stably
        return C * float(np.sum(np.logaddexp(0.0, z) - y * z)) + 0.5 * float(np.sum(reg * t * t))

    if P > NEWTON_MAX_FEATURES:
        def fun(t):
            z = Z @ t
            f = C * float(np.sum(np.logaddexp(0.0, z) - y * z)) + 0.5 * float(np.sum(reg * t * t))
            return f, C * (Z.T @ (expit(z) - y)) + reg * t

        res = minimize(fun, theta, jac=True, method="L-BFGS-B", options={"maxiter": 5000, "gtol": 1e-9, "ftol": 1e-14})
        return res.x[:-1], float(res.x[-1])

    f = objective(theta)
    for _ in range(max_iter):
        p = expit(Z @ theta)
        grad = C * (Z.T @ (p - y)) + reg * theta
        H = C * (Z.T * (p * (1 - p))) @ Z + np.diag(reg + 1e-12)
        step = np.linalg.solve(H, grad)
        t = 1.0
        while True:
            new = theta - t * step
            f_new = objective(new)
            if f_new <= f - 1e-4 * t * float(grad @ step) or t < 1e-8:
                break
            t *= 0.5
        theta, f_old, f = new, f, f_new
        if abs(f_old - f) <= tol * max(1.0, abs(f)) and np.max(np.abs(t * step)) < 1e-8 * max(1.0, np.max(np.abs(theta))) + 1e-10:
            break
        if float(grad @ step) < tol:
            break
    return theta[:-1], float(theta[-1])


def logistic_path(Xtr: np.ndarray, ytr: np.ndarray, Xva: np.ndarray, Cs) -> np.ndarray:
    """P(y = 1) on ``Xva`` ``[len(Cs), n_val]`` for every C, each fit warm-started from the previous one.

    Fitted from the strongest penalty (smallest C) to the weakest whatever the order of ``Cs``.
    """
    order = np.argsort(np.asarray(Cs, dtype=np.float64))
    out = np.empty((len(Cs), len(Xva)))
    theta = None
    for i in order:
        coef, b = logistic_fit(Xtr, ytr, float(Cs[i]), init=theta)
        theta = np.r_[coef, b]
        out[i] = expit(np.asarray(Xva, dtype=np.float64) @ coef + b)
    return out
