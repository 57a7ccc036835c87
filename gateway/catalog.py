"""What ListModels (and HTTP's /v1/models) says about every served model."""

from __future__ import annotations

from embedstream.gateway.directory import Directory
from embedstream.gateway.optioncheck import OUTPUT_TYPES, VECTOR_KINDS
from embedstream.gateway.tokens import TOKEN_FAMILIES
from embedstream.profile import Profile
from embedstream.registry import Registry
from embedstream.settings import Settings
from embedstream.v1 import embedder_pb2 as pb

FAMILIES = {
    "text-dense": pb.MODEL_FAMILY_TEXT_DENSE,
    "image-text": pb.MODEL_FAMILY_IMAGE_TEXT,
    "audio-text": pb.MODEL_FAMILY_AUDIO_TEXT,
    "sparse": pb.MODEL_FAMILY_SPARSE,
    "multi-vector": pb.MODEL_FAMILY_MULTI_VECTOR,
    "rerank": pb.MODEL_FAMILY_RERANK,
    "classify": pb.MODEL_FAMILY_CLASSIFY,
    "debug": pb.MODEL_FAMILY_DEBUG,
}
OUTPUT_TYPE_VALUES = {name: value for value, name in OUTPUT_TYPES.items()}
VECTOR_KIND_VALUES = {name: value for value, name in VECTOR_KINDS.items()}


def model_infos(registry: Registry, settings: Settings, directory: Directory) -> list[pb.ModelInfo]:
    """What ListModels (and HTTP's /v1/models) says about every served model."""
    out = []
    for name, spec in registry.models.items():
        state = directory.states[name]
        served = state.profile
        out.append(
            pb.ModelInfo(
                name=name,
                family=FAMILIES.get(spec.family, pb.MODEL_FAMILY_UNSPECIFIED),
                dimensions=state.dimensions or spec.dimensions,
                max_input_tokens=state.max_input_tokens or spec.max_input_tokens,
                serving=directory.serving(name),
                workers=state.workers,
                queue_depth=state.queue_depth,
                aliases=list(spec.aliases),
                is_default=name == registry.default,
                max_inputs_per_request=settings.max_inputs_per_request,
                normalizes=state.normalizes,
                version=spec.version,
                device=spec.device,
                dtype=spec.dtype,
                capabilities=pb.Capabilities(
                    text="text" in spec.takes,
                    image=spec.images,
                    video="video" in spec.takes,
                    audio="audio" in spec.takes,
                    matryoshka_dimensions=list(directory.matryoshka(name)),
                    prompts=sorted(directory.prompts(name)),
                    output_types=[OUTPUT_TYPE_VALUES[t] for t in spec.output_types],
                    query_prompt=spec.query_prompt or (served.query_prompt if served else ""),
                    document_prompt=spec.document_prompt or (served.document_prompt if served else ""),
                    outputs=[VECTOR_KIND_VALUES[o] for o in spec.offered_outputs],
                    labels=list(served.labels) if served else [],
                    token_ids=spec.family in TOKEN_FAMILIES,
                ),
                state=_state(directory, name),
                failure=directory.failure(name),
                profile=_profile(served),
                vocabulary_size=served.vocabulary_size if served else 0,
            )
        )
    return out


def _state(directory: Directory, name: str) -> pb.ModelState.ValueType:
    if directory.serving(name):
        return pb.MODEL_STATE_SERVING
    return pb.MODEL_STATE_FAILED if directory.failure(name) else pb.MODEL_STATE_WAITING


def _profile(found: Profile | None) -> pb.ModelProfile | None:
    if found is None:
        return None
    return pb.ModelProfile(
        loader=found.loader,
        architecture=found.architecture,
        pooling=found.pooling,
        include_prompt=found.include_prompt,
        normalizes=found.normalizes,
        prompts=found.prompts,
        query_prompt=found.query_prompt,
        document_prompt=found.document_prompt,
        default_prompt=found.default_prompt,
        matryoshka_dimensions=list(found.matryoshka_dimensions),
        matryoshka_layer_norm=found.matryoshka_layer_norm,
        heads=list(found.heads),
        max_input_tokens=found.max_input_tokens,
        padding_side=found.padding_side,
        engine=found.engine,
    )
