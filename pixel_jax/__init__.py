"""pixel_jax: pixel-space reasoning for vision-language models in JAX/Flax."""
