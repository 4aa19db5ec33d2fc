#!/bin/bash
# The group files of docs/results.md from finished run folders, then their tables and figures.
# Run from the repository root after the commands of docs/results.md; RUNS: the folder holding
# the run folders (default runs), PYTHON: the interpreter (default python).
set -euo pipefail
PY=${PYTHON:-python}
R=${RUNS:-runs}
$PY examples/results_table.py collect docs/results/attnmel-lite0.json \
  --title "AttnMel on ImageNet EfficientNet-Lite0: gates, GAP head, gates + lesion masks (3 epochs), gates (8 epochs); ISIC 2017 melanoma" \
  --primary melanoma.auc \
  --metrics melanoma.auc melanoma.ap melanoma.sensitivity_at_specificity.0.80 melanoma.sensitivity_at_specificity.0.90 \
    melanoma.sensitivity_at_specificity.0.95 attention_jaccard.val.gate0 attention_jaccard.val.gate1 \
  --variant gates "$R/p3_gates_s*" --variant gap "$R/p3_gap_s*" --variant gates-roi "$R/p3_roi_s*" \
  --variant gates-8ep "$R/attnmel_lite0_s?" --variant gates-paper-sgd "$R/p3_paper_s?" \
  --compare gates gap --compare gates-roi gates --compare gates-roi gap --compare gates-8ep gates \
  --data "isic2017_256, official 2000/150/600 split, melanoma vs rest" \
  --differs "192 px crops of 256 px squashed images, 3 epochs (gates-8ep: 8; the paper: 50), timm recipe (AdamW, cosine, EMA) instead of SGD, EfficientNet-Lite0 instead of VGG-16, CPU"
$PY examples/results_table.py collect docs/results/arl-lite0.json \
  --title "ARL-EfficientNet-Lite0 against EfficientNet-Lite0 (ImageNet), ISIC 2017 both tasks" \
  --primary mean_auc --metrics mean_auc melanoma.auc seborrheic_keratosis.auc \
    melanoma.sensitivity_at_specificity.0.90 --log-columns 'alpha/*' \
  --variant arl-lite0 "$R/arl_lite0_s*" --variant lite0 "$R/lite0_s*" \
  --variant arl-lite0-timm-head "$R/oldinit_arl_lite0_s*" --compare arl-lite0 lite0 \
  --data "isic2017_256, official 2000/150/600 split, one 3-class network scored on both tasks" \
  --differs "EfficientNet-Lite0 instead of ResNet-50, 192 px patches, one patch per image per epoch (the paper: 60), 3 epochs (the paper: up to 100), timm recipe, CPU"
$PY examples/results_table.py collect docs/results/care-2018.json \
  --title "CARE against the same two stages without it, ISIC 2018 task 3 (7 classes)" \
  --primary balanced_accuracy \
  --metrics balanced_accuracy mean_auc accuracy per_class.DF.recall per_class.VASC.recall per_class.AKIEC.recall \
    rare_attention.inside rare_attention.outside \
  --variant care "$R/care_s?" --variant no-care "$R/nocare_s?" --variant stage-1 "$R/care_stage1_s?" \
  --compare care no-care \
  --data "isic2018_200x150, lesion-grouped split (split seed 0 for every run): 7010/1001/2004 images, training on a random 2500 drawn with the run seed" \
  --differs "64x85 px input, 2 + 2 epochs (the paper: 10 + 10 at 224 px), a random 2500 of the 7010 training images, CPU"
$PY examples/results_table.py collect docs/results/attnmel-8ep.json \
  --title "AttnMel gates on ImageNet EfficientNet-Lite0: the best or the last epoch tested, 192 or 224 px; ISIC 2017 melanoma" \
  --primary melanoma.auc \
  --metrics melanoma.auc melanoma.ap melanoma.sensitivity_at_specificity.0.80 melanoma.sensitivity_at_specificity.0.90 \
    melanoma.sensitivity_at_specificity.0.95 attention_jaccard.val.gate0 attention_jaccard.val.gate1 \
  --variant gates-8ep-best "$R/attnmel_lite0_s?" --variant gates-8ep-last "$R/gates8_last_s?" \
  --variant gates-224-8ep-last "$R/g224_last_s?" \
  --compare gates-8ep-last gates-8ep-best --compare gates-224-8ep-last gates-8ep-last \
  --compare gates-224-8ep-last gates-8ep-best \
  --data "isic2017_256, official 2000/150/600 split, melanoma vs rest" \
  --differs "192 or 224 px crops of 256 px squashed images, 8 epochs (the paper: 50), timm recipe (AdamW, cosine, EMA) instead of SGD, EfficientNet-Lite0 instead of VGG-16, CPU"
$PY examples/results_table.py collect docs/results/arl-cnn14.json \
  --title "ARL-CNN14 against ResNet-14 from scratch, ISIC 2017 both tasks" \
  --primary mean_auc --metrics mean_auc melanoma.auc seborrheic_keratosis.auc \
    melanoma.sensitivity_at_specificity.0.90 --log-columns 'alpha/*' \
  --variant arl-cnn14 "$R/cnn14_arl_s?" --variant resnet14 "$R/cnn14_plain_s?" \
  --compare arl-cnn14 resnet14 \
  --data "isic2017_256, official 2000/150/600 split, one 3-class network scored on both tasks" \
  --differs "ResNet-14 / ARL-CNN14 from scratch at 128 px patches, one patch per image per epoch (the paper: 60), 6 epochs (the paper: up to 100), CPU"
$PY examples/results_table.py render docs/results/*.json
