# %% [markdown]
# # causal_follow_up

# %%
import sklens
