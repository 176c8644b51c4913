import json
from pathlib import Path

from mixture_helpers import png

from lightbagel.cli.data import main
from lightbagel.data.samples import to_record
from lightbagel.data.skips import SkipCounter
from lightbagel.data.streams import read_shard


def read_all(out, prefix):
    counter = SkipCounter()
    records = [to_record(raw, "t2i", 10**8) for url in sorted(out.glob(f"{prefix}-*.tar"))
               for raw in read_shard(str(url), counter)]
    assert counter.total == 0
    return records


def test_images_folder_to_t2i_shards(tmp_path):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for i in range(5):
        (folder / "sub" / f"im{i}.png").write_bytes(png((24, 16)))
        (folder / "sub" / f"im{i}.txt").write_text(f"caption {i}\n")
    (folder / "nocaption.png").write_bytes(png((8, 8)))
    assert main(["images", str(folder), str(tmp_path / "out"), "--per-shard", "2"]) == 0
    records = read_all(tmp_path / "out", "t2i")
    assert [r["text"] for r in records] == [f"caption {i}" for i in range(5)]
    assert all(r["task"] == "t2i" and r["target"].size == (24, 16) for r in records)


def test_a_file_named_as_an_image_that_is_not_one_is_left_out_and_said(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name, data in (("good.png", png((16, 16))), ("notes.png", b"just some text\n"),
                       ("cut.png", png((16, 16))[:40])):
        (folder / name).write_bytes(data)
        (folder / name).with_suffix(".txt").write_text(f"caption of {name}\n")
    assert main(["images", str(folder), str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert [r["text"] for r in read_all(tmp_path / "out", "t2i")] == ["caption of good.png"]
    assert captured.err.strip() == (f"lightbagel-data: left out 2 sample(s) whose image is not a readable image, "
                                    f"first {folder / 'cut.png'}: UnidentifiedImageError")
    assert "wrote 1 samples" in captured.out


def test_edit_jsonl_to_edit_shards(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / name).write_bytes(png((16, 16)))
    rows = [{"source": "a.png", "instruction": "make it red", "target": "b.png"},
            {"source": ["a.png", "b.png"], "instruction": "put <image> into <image>", "target": "c.png"}]
    (tmp_path / "edits.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert main(["edits", str(tmp_path / "edits.jsonl"), str(tmp_path / "out")]) == 0
    first, second = read_all(tmp_path / "out", "edit")
    assert first["text"] == "make it red" and first["source"] is not None
    assert len(second["sources"]) == 2 and second["source"] is None


def test_bad_jsonl_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "edits.jsonl").write_text('{"source": "a.png"}\n')
    assert main(["edits", str(tmp_path / "edits.jsonl"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "edits.jsonl:1" in err


def test_inspect_the_tiny_recipe(tmp_path, capsys):
    grid = tmp_path / "grid.png"
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "tiny.yaml"
    args = ["inspect", str(recipe), f"data.root={tmp_path / 'shapes'}", "data.num_samples=40", "--grid", str(grid)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "shapes: weight 1" in out and "skipped none" in out and "tokens per sample" in out
    assert grid.is_file()
