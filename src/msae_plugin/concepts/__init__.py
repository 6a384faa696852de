"""Concept analysis of SAEs on CLIP models: naming latents with a vocabulary (``naming``),
vocabularies and their text embeddings (``vocabulary``), concept-based similarity search
(``search``). See docs/concepts.md."""

from msae_plugin.concepts.naming import ConceptNames, LatentName, name_concepts
from msae_plugin.concepts.search import concept_search, edit_embeddings, text_query
from msae_plugin.concepts.vocabulary import load_vocabulary, text_embeddings

__all__ = [
    "ConceptNames", "LatentName", "concept_search", "edit_embeddings", "load_vocabulary",
    "name_concepts", "text_embeddings", "text_query",
]
