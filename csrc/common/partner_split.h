// How the CUDA pair sums split a sweep's partners across blocks (csrc/cuda/pair_sum.cuh),
// from the sizes alone, so that the same sizes give the same split, and so the same bits,
// on every device. Host code without CUDA: bench/roofline.py's model is checked against it.
//
// One thread owns one row and a block 128 rows, so a sweep of n rows launches ceil(n / 128)
// blocks: at n = 4096, 32 blocks for the 132 SMs of an H100. The partners are then cut into
// consecutive ranges, each swept by its own row of blocks (blockIdx.y); the ranges' partial
// gradients go to slabs that are added in range order afterwards.
#pragma once

#include <algorithm>
#include <cstddef>

#include "pair_sum_args.h"

namespace gaussreg {

struct PartnerSplit {
  index_t count, width;  // ranges; partners in each (the last one may hold fewer)
};

// Blocks a launch aims at (about 4 an SM of a 132-SM H100), partners a range keeps at least
// (4 tiles of 32), and the most the slabs of partial gradients may take.
constexpr index_t kTargetBlocks = 512;
constexpr index_t kMinRangePartners = 128;
constexpr std::size_t kSlabBudget = std::size_t{64} << 20;
constexpr index_t kSplitRowsPerBlock = 128;  // cuda/pair_sum.cuh kRowsPerBlock

// `wanted` ranges of the partners, each a multiple of 32 partners wide (whole tiles), fewer
// when the partners run out.
inline PartnerSplit split_partners(index_t partners, index_t wanted) {
  if (partners <= 0 || wanted <= 1) return {1, std::max<index_t>(partners, 1)};
  const index_t width = (partners + wanted - 1) / wanted;
  const index_t rounded = (width + 31) / 32 * 32;
  return {(partners + rounded - 1) / rounded, rounded};
}

// The ranges of a sweep of `rows` rows of d coordinates of `element` bytes against
// `partners`: enough to aim at kTargetBlocks blocks, each range at least kMinRangePartners
// wide, the slabs (ranges x rows x d) within kSlabBudget.
inline PartnerSplit partner_split(index_t rows, index_t partners, index_t d, std::size_t element) {
  const index_t blocks = (rows + kSplitRowsPerBlock - 1) / kSplitRowsPerBlock;
  const index_t fill = (kTargetBlocks + blocks - 1) / std::max<index_t>(blocks, 1);
  const index_t wide = std::max<index_t>(1, partners / kMinRangePartners);
  const std::size_t slab = element * static_cast<std::size_t>(std::max<index_t>(rows * d, 1));
  const index_t memory = std::max<index_t>(1, static_cast<index_t>(kSlabBudget / slab));
  return split_partners(partners, std::min({fill, wide, memory}));
}

}  // namespace gaussreg
