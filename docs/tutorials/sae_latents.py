# %% [markdown]
# # sae_latents

# %%
import sklens
