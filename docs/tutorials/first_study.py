# %% [markdown]
# # first_study

# %%
import sklens
