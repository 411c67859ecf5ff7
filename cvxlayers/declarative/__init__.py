"""Declarative nodes: differentiable argmin layers beyond CVXPY (Deep Declarative Networks)."""
