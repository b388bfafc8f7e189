"""pyarrow reads a parquet file through fsspec's HTTP filesystem and the gateway."""
import pyarrow.parquet as pq
import pytest

from conftest import Gateway

COLUMNS = ["id", "label"]


@pytest.fixture(scope="module")
def local_table(releases):
    return pq.read_table(releases["data"].src / "table.parquet", columns=COLUMNS)


def test_read_table_two_columns_with_filesystem(gateway: Gateway, fs, local_table):
    url = gateway.data_url("table.parquet")
    table = pq.read_table(url, filesystem=fs, columns=COLUMNS)
    assert table.column_names == COLUMNS
    assert table.num_rows == 60_000
    assert table.equals(local_table)


def test_row_groups_from_file_object(gateway: Gateway, fs, local_table):
    local = pq.ParquetFile(gateway.data.src / "table.parquet")
    with fs.open(gateway.data_url("table.parquet"), "rb", block_size=128 * 1024,
                 cache_type="none") as f:
        remote = pq.ParquetFile(f)
        assert remote.metadata.num_row_groups == local.metadata.num_row_groups == 6
        assert remote.schema_arrow.equals(local.schema_arrow)
        for i in (0, 3, 5):
            assert remote.read_row_group(i, columns=COLUMNS).equals(
                local.read_row_group(i, columns=COLUMNS)), f"row group {i}"
        assert remote.read(columns=COLUMNS).equals(local_table)
