"""Jobs: plain `run(config, workdir)` functions dispatched by `dreamix_jax.main`."""
