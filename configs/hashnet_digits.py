"""HashNet, 32 bits, small CNN on scikit-learn's bundled 8×8 digits (the default; offline).

  python train.py --config=configs/hashnet_digits.py --workdir=runs/hashnet_digits

Protocol: 30 queries per class (300), the other 1,497 images are the database, and 100 per
class of them (1,000) are the training set; mAP over the whole database.
"""

from ml_collections import config_dict


def get_config() -> config_dict.ConfigDict:
  c = config_dict.ConfigDict()
  c.dataset = 'digits'
  c.image_size = config_dict.placeholder(int)  # None: native 8×8
  c.class_list = config_dict.placeholder(str)  # file of class ids to keep (None: all)
  c.backbone = 'small_cnn'
  c.bits = 32
  c.batch_size = 64
  c.num_steps = 2000
  c.learning_rate = 1e-3
  c.optimizer = 'adam'
  c.momentum = 0.9
  c.weight_decay = 1e-4
  c.hash_lr_mult = 10.0
  c.lr_decay_every = 700
  c.lr_decay_factor = 0.5
  c.seed = 0
  c.log_every = 50
  c.eval_every = 500
  c.checkpoint_every = 500
  c.map_topk = config_dict.placeholder(int)  # None: the whole database
  c.eval_batch_size = 256
  c.compute_dtype = 'float32'  # 'bfloat16': bf16 compute, f32 params (GPU/TPU)
  # torchvision-named .npz / .safetensors backbone weights (alexnet / resnet18 / resnet50),
  # loaded when a run starts without a checkpoint; None: random initialisation.
  c.pretrained = config_dict.placeholder(str)

  c.beta = config_dict.ConfigDict()
  c.beta.schedule = 'hashnet'  # or 'constant'
  c.beta.beta0 = 1.0
  c.beta.gamma = 0.02  # the paper uses 0.005 over 10,000 steps; β ≈ 6.1 at step 2,000 here
  c.beta.power = 0.5
  c.beta.step_size = 200

  c.loss = config_dict.ConfigDict()
  c.loss.name = 'hashnet'  # or 'dhn'
  c.loss.weighting = 'balanced'  # 'fixed' (authors' code) or 'none'
  c.loss.similarity = 'hard'  # 'soft': Jaccard of multi-hot labels; 'views': label-free

  # More in eval.json, comma-separated: ndcg (multi-hot labels), neighbours, copies.
  c.eval_extra = ''

  # The random views of loss.similarity='views' (hashjax/hashing/augment.py); 0 / False: off.
  c.augment = config_dict.ConfigDict()
  c.augment.crop = 0.5  # kept area in [1 − crop, 1]
  c.augment.flip = False  # off for digits: a mirrored digit is another symbol
  c.augment.rotate = 10.0  # degrees
  c.augment.brightness = 0.2
  c.augment.contrast = 0.2
  c.augment.noise = 0.05
  c.augment.cutout = 0.25  # side fraction
  c.loss.alpha = config_dict.placeholder(float)  # None: 10 / bits
  c.loss.class_num = config_dict.placeholder(float)  # for weighting='fixed'
  c.loss.quantization_weight = 0.1  # DHN only

  # Fields that may be None are typed references (placeholder: None by default), so the
  # command line can set them to None too: --config.split.query_per_class=None.
  c.split = config_dict.ConfigDict()
  c.split.query_per_class = config_dict.FieldReference(30, field_type=int)  # or num_query
  c.split.num_query = config_dict.placeholder(int)
  c.split.train_per_class = config_dict.FieldReference(100, field_type=int)  # or num_train
  c.split.num_train = config_dict.placeholder(int)
  c.split.train_in_database = True  # training images stay in the database
  # Incremental protocols (docs/UPDATE.md): what arrives later, and which part this run sees.
  c.split.new_classes = config_dict.placeholder(str)  # e.g. '7,8,9': class-incremental
  c.split.later_fraction = 0.0  # e.g. 0.5: sample-incremental
  c.split.stage = 'all'  # 'old' (the base run), 'new' (the update's data) or 'all'
  c.split.validation = False  # the test queries leave the data; queries from the database

  # Updating a finished run with the old model as the prior (docs/UPDATE.md); not named
  # 'update', which is a method of ConfigDict (--config.update.X cannot reach it).
  c.updating = config_dict.ConfigDict()
  c.updating.from_workdir = config_dict.placeholder(str)  # the finished run; None: no update
  c.updating.prior = 'laplace'  # 'none' (fine-tune), 'l2' (L2-SP) or 'laplace' (EWC)
  c.updating.prior_weight = 1.0  # λ
  c.updating.database_codes = 'reencode'  # or 'keep': old items keep their stored codes
  c.updating.code_anchor_weight = 0.0  # pulls new codes towards the old model's
  c.updating.replay_per_class = 0  # old training images per old class the update may see
  c.save_fisher = False  # write fisher.npz at the end (the prior of a later 'laplace' update)
  c.checkpoint = config_dict.ConfigDict()
  c.checkpoint.max_to_keep = 2
  c.checkpoint.max_bytes = config_dict.placeholder(int)  # byte budget (quota); None: disk only
  c.checkpoint.best_metric = config_dict.placeholder(str)  # e.g. 'map@all': never pruned
  c.checkpoint.async_save = True
  return c
