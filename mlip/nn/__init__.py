"""Layers of the Facet-style model. Equivariant features are plain arrays of shape
[..., (lmax+1)**2, channels] in e3nn-jax's real spherical-harmonic basis (index l*l + l + m,
m = -l..l; polar axis +y), so that layers compose without IrrepsArray bookkeeping."""
