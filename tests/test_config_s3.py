def test_s3_roundtrip(s3_bucket):
    import pandas as pd
    from stronglens.config import atomic_write_parquet, read_parquet, atomic_write_text, read_bytes
    url = f"s3://{s3_bucket}/m/x.parquet"
    atomic_write_parquet(pd.DataFrame({"a": [1, 2]}), url)
    assert read_parquet(url).a.tolist() == [1, 2]
    atomic_write_text(f"s3://{s3_bucket}/t.txt", "hi")
    assert read_bytes(f"s3://{s3_bucket}/t.txt") == b"hi"
