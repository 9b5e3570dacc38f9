"""MinHash near-duplicate removal: shingles, signatures, LSH banding, clustering without chaining, and
the global stage that runs them as map/shuffle/reduce passes over a dataset."""
