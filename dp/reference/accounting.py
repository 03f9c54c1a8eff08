"""Reference values for dp/tests/accounting.rs, computed independently of fedcrm's code.

    python3 -m venv /tmp/dpvenv && /tmp/dpvenv/bin/pip install dp-accounting==0.6.0
    /tmp/dpvenv/bin/python dp/reference/accounting.py

Settings without the tau term use dp_accounting's own RDP accountant on a Gaussian
event (RDP alpha / (2 z^2) at every order, z = total noise stddev / l2 sensitivity),
composed by the accountant. Settings with the tau term of the distributed discrete
Gaussian (Kairouz, Liu & Steinke, ICML 2021, Proposition 14; the first term of
google-research/federated distributed_dp/accounting_utils.py `compute_rdp_dgaussian`:
alpha/2 * l2_scale^2 + tau * d, tau = 10 * sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k/(k+1))
with the local sigma) compute that RDP curve here and convert it with dp_accounting's
compute_epsilon. Orders: 2..128 and 256, as accounting_utils.RDP_ORDERS.
"""
import math

import dp_accounting
from dp_accounting.rdp import rdp_privacy_accountant as rdp

ORDERS = [float(a) for a in range(2, 129)] + [256.0]
DELTA = 1e-6


def gaussian(l2_sq, total_variance, times):
    """eps, rho of `times` Gaussian releases via dp_accounting's RDP accountant."""
    z = math.sqrt(total_variance / l2_sq)
    acc = rdp.RdpAccountant(ORDERS)
    acc.compose(dp_accounting.GaussianDpEvent(z), times)
    return acc.get_epsilon(DELTA), times * l2_sq / (2 * total_variance)


def distributed(l2_sq, local_variance, k, d, times):
    tau = 10 * sum(math.exp(-2 * math.pi**2 * local_variance * j / (j + 1)) for j in range(1, k))
    l2_scale_sq = l2_sq / (k * local_variance)
    curve = [times * (a / 2 * l2_scale_sq + tau * d) for a in ORDERS]
    eps, _ = rdp.compute_epsilon(ORDERS, curve, DELTA)
    return eps, times * l2_sq / (2 * k * local_variance), times * tau * d


print("single release, 3 histograms, k=1, sigma^2=50:", gaussian(3, 50, 1))
print("4-pass RFM:", gaussian(3, 50, 4))
print("12 analyses of 4 passes:", gaussian(3, 50, 48))
print("k=12 nodes, sigma^2=4 each (tau negligible), 1 release:", gaussian(3, 48, 1))
print("distributed, 5 nodes, sigma^2=1, d=200, 4 passes:", distributed(3, 1.0, 5, 200, 4))
print("distributed, 50 nodes, sigma^2=0.5, d=100, 1 release:", distributed(3, 0.5, 50, 100, 1))
print("distributed, 50 nodes, sigma^2=4, d=10000, 12 releases:", distributed(3, 4.0, 50, 10000, 12))
