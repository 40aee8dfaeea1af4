"""Scale-out on Ray: the distributed batch export (``export``) and data-parallel training of
the dot-product EBM (``train``) and of the CRBM (``crbm_train``), on a cluster reached through
``cluster``.

The only package that imports ray, an optional extra (``pip install "recsys-ebm[ray]"``); its
modules import it on first use, so importing them without ray works and using them raises
:class:`~recsys_ebm.errors.MissingDependencyError` naming the extra.
"""
