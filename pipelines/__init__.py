"""Tuned model options (``<model>.toml``) and tuning grids (``grids.toml``), shipped as the
package data ``recsys_ebm.pipelines``; read them with ``recsys_ebm.config.read_pipeline``."""
