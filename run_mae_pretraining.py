"""VideoMAE pre-training (Tong et al. 2022): the pixel objective alone, no teacher.

Same loop and flags as ``run_mmkd_pretraining.py`` less the teacher's; the checkpoint it
writes is a valid ``--path_t`` for distillation, so a teacher can be made here.
"""
from run_mmkd_pretraining import get_args_parser, main

if __name__ == "__main__":
    main(get_args_parser(teacher=False).parse_args())
