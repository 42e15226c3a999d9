"""Physics-world scores of generated videos: held-out captions (and, per task, their given frames)
turned into videos by a trained DiT and scored against the scenes the captions describe."""

from __future__ import annotations

import ml_collections
import numpy as np
from flax import nnx

from sora_jax.eval.fvd import RandomVideoFeatures, feature_statistics, frechet_distance
from sora_jax.eval.generate import make_generator
from sora_jax.eval.inputs import ClipLayout


class WorldEvaluation:
    """Videos for ``eval.world_clips`` held-out physics-world captions (clips of ``eval.seed``, at the
    run's sample shape and rate, generation seed = clip index), per task, scored against the scenes
    the captions describe (:mod:`sora_jax.eval.world_score`).

    Tasks: ``text_to_video`` (the caption alone), ``image_to_video`` (and its first frame) and
    ``extend_forward`` (and the first half of its temporal groups), or those of ``tasks``. Keys:
    ``world/<task>/<score>`` for every score and ``overall``, and ``world/overall``, the mean over
    tasks; with two or more clips also ``world/<task>/fvd``, the Fréchet video distance of the
    task's videos to the held-out clips (:class:`~sora_jax.eval.fvd.RandomVideoFeatures`; lower is
    closer).

    A run with sound (``audio.enabled``) makes each video's sound with it, scored against the scene
    and the video it came with (:mod:`sora_jax.eval.sound_score`): ``world/<task>/sound_count``,
    ``sound_sync`` and ``sound``; and one more task, ``video_to_audio``: the held-out clip's own
    video given whole, its sound made and scored (its picture is the given one, so it has sound
    scores only). ``world/sound`` is the mean ``sound`` over the tasks; ``world/overall`` stays the
    mean of the picture's scores.
    """

    TASKS = ("text_to_video", "image_to_video", "extend_forward")
    SOUND_TASK = "video_to_audio"

    def __init__(
        self, graphdef: nnx.GraphDef, config: ml_collections.ConfigDict, tasks: tuple[str, ...] = TASKS
    ) -> None:
        from sora_jax.data import world
        from sora_jax.eval.world_score import scene_facts

        t, d = config.train, config.diffusion
        self.config = config
        self.sound = bool(config.audio.enabled) and t.sample_frames > 1
        self.tasks = tasks + ((self.SOUND_TASK,) if self.sound and self.SOUND_TASK not in tasks else ())
        self.generate = make_generator(
            graphdef, config, frames=t.sample_frames, height=t.sample_height, width=t.sample_width,
            steps=d.sample_steps, guidance=d.guidance, method=d.sampler, cond_guidance=d.cond_guidance,
            fps=t.sample_fps, with_sound=True,
        )  # fmt: skip
        space = self.generate.space
        shape = (t.sample_frames, t.sample_height, t.sample_width)
        self.layout = ClipLayout(
            *shape, config.model.channels, config.model.patch_size[0], space, config.conditioning.frame_level
        )
        frames, height, width = space.pixel_shape(*shape)
        # With sound, captions may describe it as training's did (audio.caption_sounds).
        sounds = config.audio.caption_sounds if self.sound else 0.0
        self.clips = [
            world.make_clip(
                config.eval.seed, i, frames=frames, height=height, width=width, fps=t.sample_fps,
                caption_sounds=sounds,
            )
            for i in range(config.eval.world_clips)
        ]  # fmt: skip
        self.facts = [scene_facts(clip) for clip in self.clips]
        # FVD against the held-out clips themselves, under fixed random features (no downloaded
        # network): comparable between checkpoints and runs of the same clip shape and count only.
        self.features = RandomVideoFeatures()
        self._real_statistics: tuple[np.ndarray, np.ndarray] | None = None  # Of the held-out clips.

    def given_frames(self, task: str) -> int:
        """How many of a clip's first frames ``task`` gives the generator (0 for text_to_video)."""
        if task == "image_to_video":
            return 1
        if task == "extend_forward":  # The first half of the temporal groups, at least one.
            model_frames = max(1, self.layout.groups // 2) * self.layout.time_patch
            return self.layout.space.pixel_shape(model_frames, 1, 1)[0]
        return 0

    def _condition(self, task: str, frames: np.ndarray):
        if task == self.SOUND_TASK:
            return self.layout.whole_video(frames)
        given = self.given_frames(task)
        return self.layout.condition([("start", frames[:given])]) if given else None

    def scores(self, params: nnx.State) -> dict[str, float]:
        from sora_jax.eval.sound_score import sound_scores
        from sora_jax.eval.world_score import mean_scores, world_scores

        result: dict[str, float] = {}
        fps, rate = self.config.train.sample_fps, self.config.audio.sample_rate
        for task in self.tasks:
            rows, videos, heard = [], [], []
            for index, (clip, facts) in enumerate(zip(self.clips, self.facts, strict=True)):
                condition = self._condition(task, clip.frames)
                video, sound = self.generate(params, clip.caption, index, condition=condition)
                videos.append(video)
                rows.append(world_scores(video, facts))
                if sound is not None:
                    heard.append(sound_scores(clip, sound, rate, video=video, fps=fps))
            if heard:
                means = mean_scores(heard, tuple(heard[0]))
                result |= {f"world/{task}/{name}": value for name, value in means.items()}
            if task == self.SOUND_TASK:  # The picture is the given one: only its sound is scored.
                continue
            result |= {f"world/{task}/{name}": value for name, value in mean_scores(rows).items()}
            if len(videos) >= 2:  # A covariance needs two videos a set.
                result[f"world/{task}/fvd"] = self._fvd(np.stack(videos))
        pictures = [task for task in self.tasks if task != self.SOUND_TASK]
        result["world/overall"] = float(np.mean([result[f"world/{task}/overall"] for task in pictures]))
        if self.sound:
            result["world/sound"] = float(np.mean([result[f"world/{task}/sound"] for task in self.tasks]))
        return result

    def sound_references(self) -> dict[str, dict[str, float]]:
        """The same clips' reference sound scores (their own sound, silence, noise, the sound 0.25 s
        late, ...): :func:`sora_jax.eval.sound_score.sound_reference_scores`."""
        from sora_jax.eval.sound_score import sound_reference_scores

        return sound_reference_scores(self.clips, self.config.audio.sample_rate)

    def _fvd(self, videos: np.ndarray) -> float:
        """FVD of ``videos`` to the held-out clips, whose feature statistics are computed once."""
        if self._real_statistics is None:
            real = np.stack([clip.frames for clip in self.clips])
            self._real_statistics = feature_statistics(self.features(real))
        return frechet_distance(*self._real_statistics, *feature_statistics(self.features(videos)))

    def references(self) -> dict[str, dict[str, float]]:
        """The same clips' reference scores (the world's own videos, another scene, noise, ...):
        :func:`sora_jax.eval.world_score.reference_scores`."""
        from sora_jax.eval.world_score import reference_scores

        return reference_scores(self.clips)

    def copy_baseline(self, task: str) -> dict[str, float]:
        """Mean scores of a generator that only copies what ``task`` gives it: the given frames,
        then the last of them held to the end (``task`` must give frames)."""
        from sora_jax.eval.world_score import mean_scores, world_scores

        given = self.given_frames(task)
        if not given:
            raise ValueError(f"{task} gives no frames to copy")
        rows = []
        for clip, facts in zip(self.clips, self.facts, strict=True):
            held = np.repeat(clip.frames[given - 1 : given], len(clip.frames) - given, axis=0)
            rows.append(world_scores(np.concatenate([clip.frames[:given], held]), facts))
        return mean_scores(rows)
