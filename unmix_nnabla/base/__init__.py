"""Plumbing: errors and how processes run and end (runtime), files written safely (files), the
project's words (vocabulary), NNabla contexts (context), and every compiled loop (kernels)."""
